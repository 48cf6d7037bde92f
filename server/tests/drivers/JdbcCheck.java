// Sluice through the PostgreSQL JDBC driver (pgjdbc). Run: java -cp postgresql.jar JdbcCheck.java PORT
// Prints 'jdbc: N passed, N failed' and exits non-zero on any failure.
import java.math.BigDecimal;
import java.sql.*;

public class JdbcCheck {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/sluice?user=sluice&prepareThreshold=2";
        int passed = 0, failed = 0;
        try (Connection c = DriverManager.getConnection(url)) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE views (id BIGINT PRIMARY KEY, url VARCHAR(100), price NUMERIC(8,2), at TIMESTAMP, ok BOOLEAN)");
            }
            // Enough executions to cross prepareThreshold: named server-side statements, binary values.
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO views VALUES (?, ?, ?, ?, ?)")) {
                for (int i = 1; i <= 6; i++) {
                    ins.setLong(1, i);
                    ins.setString(2, "/page/" + i);
                    ins.setBigDecimal(3, new BigDecimal(i + ".25"));
                    ins.setTimestamp(4, Timestamp.valueOf("2026-05-01 10:00:0" + i));
                    ins.setBoolean(5, i % 2 == 0);
                    check(ins.executeUpdate() == 1, "insert count");
                }
            }
            try (PreparedStatement q = c.prepareStatement("SELECT url, price, at, ok FROM views WHERE id = ?")) {
                for (int i = 1; i <= 6; i++) {
                    q.setLong(1, i);
                    try (ResultSet rs = q.executeQuery()) {
                        check(rs.next(), "row " + i);
                        check(rs.getString(1).equals("/page/" + i), "url " + rs.getString(1));
                        check(rs.getBigDecimal(2).compareTo(new BigDecimal(i + ".25")) == 0, "price " + rs.getBigDecimal(2));
                        check(rs.getTimestamp(3).equals(Timestamp.valueOf("2026-05-01 10:00:0" + i)), "at " + rs.getTimestamp(3));
                        check(rs.getBoolean(4) == (i % 2 == 0), "ok");
                        check(!rs.next(), "one row");
                    }
                }
                ResultSetMetaData md = q.getMetaData();
                check(md.getColumnTypeName(1).equals("varchar"), "type name " + md.getColumnTypeName(1));
                check(md.getColumnType(2) == Types.NUMERIC, "numeric type");
                check(md.getPrecision(2) == 8 && md.getScale(2) == 2, "numeric(8,2) " + md.getPrecision(2) + "," + md.getScale(2));
                check(md.getPrecision(1) == 100, "varchar(100) length " + md.getPrecision(1));
                check(md.getColumnType(3) == Types.TIMESTAMP, "timestamp type");
            }
            passed++;
            try (Statement s = c.createStatement()) {
                try {
                    s.executeQuery("SELECT * FROM missing_table");
                    check(false, "expected an error");
                } catch (SQLException e) {
                    check("42P01".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
                }
                try (ResultSet rs = s.executeQuery("SELECT count(*), sum(price) FROM views")) {
                    check(rs.next() && rs.getLong(1) == 6, "count");
                    check(rs.getBigDecimal(2).compareTo(new BigDecimal("22.50")) == 0, "sum " + rs.getBigDecimal(2));
                }
                check(c.getMetaData().getDatabaseProductVersion().startsWith("15.0"), "version");
            }
            // setDate sends '2026-05-01 +00' with an unspecified type; setInt into LIMIT.
            try (PreparedStatement q = c.prepareStatement("SELECT count(*) FROM views WHERE at >= ? LIMIT ?")) {
                q.setDate(1, java.sql.Date.valueOf("2026-05-01"));
                q.setInt(2, 5);
                try (ResultSet rs = q.executeQuery()) {
                    check(rs.next() && rs.getLong(1) == 6, "count since date");
                }
            }
            try (PreparedStatement q = c.prepareStatement("SELECT price * ? FROM views WHERE id = 1")) {
                q.setBigDecimal(1, new BigDecimal("2"));
                try (ResultSet rs = q.executeQuery()) {
                    check(rs.next() && rs.getBigDecimal(1).compareTo(new BigDecimal("2.50")) == 0, "price * 2");
                }
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("UPDATE views SET ok = true WHERE id = 1");
            }
            c.commit();
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*) FROM views WHERE ok")) {
                check(rs.next() && rs.getLong(1) == 4, "after update");
            }
            passed++;
        } catch (Throwable t) {
            t.printStackTrace();
            failed++;
        }
        System.out.println("jdbc: " + passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}
