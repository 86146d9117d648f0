// A JDBC client of astroflight's Flight SQL service, with Apache Arrow's Flight SQL JDBC driver.
// Prints one JSON object per line. One file for both modes: Java 17 runs a single source file.
//   java -cp <driver> JdbcCheck.java <host:port> <objectId>
//     connect, list tables and columns through DatabaseMetaData, run a query and a prepared
//     statement with a parameter; tests/python/test_jdbc.py compares the rows with DuckDB's.
//   java -cp <driver> JdbcCheck.java auth <host:port> <url parameters>
//     connect to a server that needs credentials with the URL parameters given (token=..., or
//     user=...&password=..., which the driver turns into a Handshake with basic credentials), list
//     the tables it is shown and count the rows of ztf and lsst; a refused query prints its error.
//     tests/python/test_security.py checks them against the server's grants.
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;

public class JdbcCheck {
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

    /** Every row of a result set as JSON arrays, and its column types. */
    static String rows(ResultSet rs) throws SQLException {
        ResultSetMetaData md = rs.getMetaData();
        List<String> types = new ArrayList<>();
        for (int i = 1; i <= md.getColumnCount(); i++) types.add(json(md.getColumnTypeName(i)));
        List<String> out = new ArrayList<>();
        while (rs.next()) {
            List<String> row = new ArrayList<>();
            for (int i = 1; i <= md.getColumnCount(); i++) row.add(json(rs.getObject(i)));
            out.add("[" + String.join(",", row) + "]");
        }
        return "\"types\":[" + String.join(",", types) + "],\"rows\":[" + String.join(",", out) + "]";
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

    static void auth(String addr, String params) throws Exception {
        String url = "jdbc:arrow-flight-sql://" + addr + "/?useEncryption=false&" + params;
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

    public static void main(String[] args) throws Exception {
        if (args[0].equals("auth")) {
            auth(args[1], args[2]);
            return;
        }
        String url = "jdbc:arrow-flight-sql://" + args[0] + "/?useEncryption=false";
        try (Connection c = DriverManager.getConnection(url)) {
            DatabaseMetaData md = c.getMetaData();
            System.out.println("{\"what\":\"product\",\"name\":" + json(md.getDatabaseProductName()) + "}");
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, null, "%", null)) {
                while (rs.next()) {
                    tables.add("[" + json(rs.getString("TABLE_CAT")) + "," + json(rs.getString("TABLE_SCHEM")) + ","
                            + json(rs.getString("TABLE_NAME")) + "," + json(rs.getString("TABLE_TYPE")) + "]");
                }
            }
            System.out.println("{\"what\":\"tables\",\"tables\":[" + String.join(",", tables) + "]}");
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, null, "ztf", "%")) {
                while (rs.next()) {
                    columns.add("[" + json(rs.getString("COLUMN_NAME")) + "," + json(rs.getString("TYPE_NAME")) + "]");
                }
            }
            System.out.println("{\"what\":\"columns\",\"columns\":[" + String.join(",", columns) + "]}");
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("SELECT objectId, candid, candidate.magpsf AS magpsf, day FROM ztf "
                         + "WHERE candidate.magpsf > 18 ORDER BY candid")) {
                System.out.println("{\"what\":\"query\"," + rows(rs) + "}");
            }
            try (PreparedStatement p = c.prepareStatement(
                    "SELECT candid, candidate.jd AS jd FROM ztf WHERE objectId = ? ORDER BY candid")) {
                p.setString(1, args[1]);
                try (ResultSet rs = p.executeQuery()) {
                    System.out.println("{\"what\":\"prepared\"," + rows(rs) + "}");
                }
            }
        }
    }
}
