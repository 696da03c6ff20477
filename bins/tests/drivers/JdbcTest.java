// pgjdbc through the gateway's transaction pooling: PreparedStatements reused past
// prepareThreshold (server-side named statements S_1, S_2, ...), batches, explicit
// transactions, several threads interleaved. Prints "ok <rows>".
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

public class JdbcTest {
    static final int WORKERS = 6;
    static final int ROWS = 40;

    static Connection connect() throws Exception {
        String url = "jdbc:postgresql://" + System.getenv("SPG_TEST_HOST") + ":"
                + System.getenv("SPG_TEST_PORT") + "/" + System.getenv("SPG_TEST_DB");
        Properties p = new Properties();
        p.setProperty("user", System.getenv("SPG_TEST_USER"));
        p.setProperty("password", System.getenv("SPG_TEST_PASSWORD"));
        p.setProperty("sslmode", "require");
        p.setProperty("prepareThreshold", "2");
        return DriverManager.getConnection(url, p);
    }

    static void work(int n) throws Exception {
        try (Connection c = connect()) {
            PreparedStatement ins = c.prepareStatement("INSERT INTO jdbc_items (worker, i) VALUES (?, ?)");
            PreparedStatement dbl = c.prepareStatement("SELECT ?::int * 2");
            for (int i = 0; i < ROWS; i++) {
                c.setAutoCommit(false);
                ins.setInt(1, n);
                ins.setInt(2, i);
                ins.executeUpdate();
                c.commit();
                c.setAutoCommit(true);
                dbl.setInt(1, i);
                try (ResultSet rs = dbl.executeQuery()) {
                    rs.next();
                    if (rs.getInt(1) != i * 2) throw new AssertionError("double " + i);
                }
            }
            for (int j = 0; j < 10; j++) {
                ins.setInt(1, n);
                ins.setInt(2, ROWS + j);
                ins.addBatch();
            }
            ins.executeBatch();
            PreparedStatement cnt = c.prepareStatement("SELECT count(*), sum(i) FROM jdbc_items WHERE worker = ?");
            for (int k = 0; k < 3; k++) {
                cnt.setInt(1, n);
                try (ResultSet rs = cnt.executeQuery()) {
                    rs.next();
                    int total = ROWS + 10;
                    if (rs.getLong(1) != total || rs.getLong(2) != (long) total * (total - 1) / 2)
                        throw new AssertionError("worker " + n + ": " + rs.getLong(1) + " " + rs.getLong(2));
                }
            }
        }
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS jdbc_items");
            s.execute("CREATE TABLE jdbc_items (worker int, i int)");
        }
        List<Thread> threads = new ArrayList<>();
        List<Throwable> errors = new ArrayList<>();
        for (int n = 0; n < WORKERS; n++) {
            final int w = n;
            Thread t = new Thread(() -> {
                try {
                    work(w);
                } catch (Throwable e) {
                    synchronized (errors) {
                        errors.add(e);
                    }
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) t.join();
        if (!errors.isEmpty()) {
            for (Throwable e : errors) e.printStackTrace();
            System.exit(1);
        }
        try (Connection c = connect(); Statement s = c.createStatement();
             ResultSet rs = s.executeQuery("SELECT count(*) FROM jdbc_items")) {
            rs.next();
            System.out.println("ok " + rs.getLong(1));
        }
    }
}
