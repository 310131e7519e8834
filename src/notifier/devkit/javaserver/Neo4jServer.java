// A Neo4j Community server for tests and `notifier dev`: the embedded DBMS
// from Maven Central with its Bolt connector on 127.0.0.1. Run as a single-file
// source program: java -cp 'lib/*' Neo4jServer.java HOME BOLT_PORT PAGECACHE
import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.io.ByteUnit;

public class Neo4jServer {
  public static void main(String[] args) throws Exception {
    var dbms = new DatabaseManagementServiceBuilder(Path.of(args[0]))
        .setConfig(BoltConnector.enabled, true)
        .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", Integer.parseInt(args[1])))
        // A throwaway server on loopback: any credentials are accepted.
        .setConfig(GraphDatabaseSettings.auth_enabled, false)
        .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(Long.parseLong(args[2])))
        .build();
    dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME);
    var stopped = new CountDownLatch(1);
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      dbms.shutdown();
      stopped.countDown();
    }));
    System.out.println("NOTIFIER-GRAPH-READY");
    System.out.flush();
    stopped.await();
  }
}
