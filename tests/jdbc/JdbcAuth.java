// A JDBC client of an astroflight server that needs credentials, with Apache Arrow's Flight SQL
// JDBC driver: it connects with the URL parameters given (token=..., or user=...&password=...,
// which the driver turns into a Handshake with basic credentials), lists the tables it is shown,
// and counts the rows of ztf and lsst; a refused query prints its error. One JSON object per
// line; tests/python/test_security.py checks them against the server's grants.
//   java -cp <driver> JdbcAuth.java <host:port> <url parameters>
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;

public class JdbcAuth {
    static String json(Object v) {
        if (v == null) return "null";
        if (v instanceof Number || v instanceof Boolean) return v.toString();
        StringBuilder b = new StringBuilder("\"");
        for (char c : v.toString().toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    /** The whole chain of causes: the driver wraps the gRPC status. */
    static String messages(Throwable e) {
        StringBuilder b = new StringBuilder();
        for (Throwable t = e; t != null; t = t.getCause()) b.append(t).append(" | ");
        return b.toString();
    }

    static void count(Connection c, String table) {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*) FROM " + table)) {
            rs.next();
            System.out.println("{\"what\":\"count_" + table + "\",\"value\":" + rs.getLong(1) + "}");
        } catch (SQLException e) {
            System.out.println("{\"what\":\"count_" + table + "\",\"error\":" + json(messages(e)) + "}");
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:arrow-flight-sql://" + args[0] + "/?useEncryption=false&" + args[1];
        Connection c;
        try {
            c = DriverManager.getConnection(url);
        } catch (SQLException e) {
            System.out.println("{\"what\":\"connect\",\"error\":" + json(messages(e)) + "}");
            return;
        }
        try (c) {
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = c.getMetaData().getTables(null, null, "%", null)) {
                while (rs.next()) tables.add(json(rs.getString("TABLE_NAME")));
            }
            System.out.println("{\"what\":\"tables\",\"tables\":[" + String.join(",", tables) + "]}");
            count(c, "ztf");
            count(c, "lsst");
        }
    }
}
