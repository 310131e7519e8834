"""Dev tooling: throwaway services, a Discogsography-shaped graph, `notifier dev`.

Tests, the bench and `notifier dev` use it; production roles never import it
(tests/unit/test_devkit_apart.py).
"""
