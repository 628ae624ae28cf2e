//! Tomcat 10 from Debian's packages (`tomcat10`), run from a private
//! `CATALINA_BASE` in a temp dir with the fixture servlet
//! (`tests/fixtures/tomcat/Shop.java`, compiled with javac at start) as its
//! ROOT webapp, JDBC drivers from Debian (`libpostgresql-jdbc-java`,
//! `libmariadb-java`) in the base's `lib/`, and two pooled JNDI DataSources
//! (Tomcat's own DBCP) pointing at the test's databases.
//!
//! `catalina.sh run` execs java, so the pid the harness keeps is the JVM's;
//! the shutdown port is off (-1) and the server is killed by pid with its
//! process group, like every other server here.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    db::{require_debian, MariaDb, Postgres, DB_NAME, MARIADB_PASSWORD, MARIADB_USER, PG_USER},
    env::fixture,
    servers::Server,
};

pub const CATALINA_HOME: &str = "/usr/share/tomcat10";
/// Debian's pristine copies of the configuration files (`/etc/tomcat10`
/// is made from them at install time, and may have been edited since).
const TOMCAT_ETC: &str = "/usr/share/tomcat10/etc";
pub const SERVLET_API_JAR: &str = "/usr/share/java/tomcat10-servlet-api.jar";
pub const PG_JDBC_JAR: &str = "/usr/share/java/postgresql.jar";
pub const MARIADB_JDBC_JAR: &str = "/usr/share/java/mariadb-java-client.jar";

/// A JVM and Tomcat's deployment take a few seconds on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What the servlet is configured with.
pub struct ShopConfig<'a> {
    pub pg: &'a Postgres,
    pub mariadb: &'a MariaDb,
    /// Base URL of the service the servlet calls (`<downstream>/stock/<id>`).
    pub downstream: String,
    /// A string the servlet sends as a MariaDB query parameter: it must
    /// never be exported.
    pub secret: String,
}

/// A running Tomcat serving `GET /shop/items/<id>` (see `Shop.java`).
pub struct Tomcat {
    server: Server,
}

impl Tomcat {
    #[track_caller]
    pub fn start(config: &ShopConfig) -> Tomcat {
        require_debian(&format!("{CATALINA_HOME}/bin/catalina.sh"), "tomcat10");
        require_debian(SERVLET_API_JAR, "libtomcat10-java");
        require_debian(PG_JDBC_JAR, "libpostgresql-jdbc-java");
        require_debian(MARIADB_JDBC_JAR, "libmariadb-java");
        let dir = tempfile::Builder::new()
            .prefix("waggle-tomcat-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        let base = dir.path();
        let root = base.join("webapps/ROOT");
        for sub in ["conf", "lib", "logs", "temp", "work"] {
            mkdir(&base.join(sub));
        }
        let classes = root.join("WEB-INF/classes");
        mkdir(&classes);
        mkdir(&root.join("META-INF"));
        compile_servlet(&classes, base);
        for file in ["web.xml", "catalina.properties"] {
            copy(&Path::new(TOMCAT_ETC).join(file), &base.join("conf").join(file));
        }
        for jar in [PG_JDBC_JAR, MARIADB_JDBC_JAR] {
            let name = Path::new(jar).file_name().unwrap_or_default();
            std::os::unix::fs::symlink(jar, base.join("lib").join(name))
                .unwrap_or_else(|e| panic!("linking {jar} into {}: {e}", base.display()));
        }
        write(&root.join("WEB-INF/web.xml"), WEB_XML);
        write(&root.join("META-INF/context.xml"), &context_xml(config));

        let server = Server::launch_within("tomcat", dir, START_TIMEOUT, |port, base| {
            write(&base.join("conf/server.xml"), &server_xml(port));
            let mut cmd = Command::new(format!("{CATALINA_HOME}/bin/catalina.sh"));
            cmd.arg("run")
                .env("CATALINA_HOME", CATALINA_HOME)
                .env("CATALINA_BASE", base)
                .env("CATALINA_TMPDIR", base.join("temp"))
                // Start-up time, not behaviour: C1 only and a small heap.
                .env("JAVA_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xms32m -Xmx256m")
                .env_remove("CATALINA_OPTS")
                .env_remove("JAVA_TOOL_OPTIONS");
            cmd
        });
        Tomcat { server }
    }
}

/// Port, pid, url and log are the [`Server`]'s.
impl std::ops::Deref for Tomcat {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

/// One HTTP/1.1 NIO connector on 127.0.0.1, bound only once the webapp is
/// deployed (`bindOnInit="false"`), so accepting means serving; no
/// shutdown port.
fn server_xml(port: u16) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector port="{port}" address="127.0.0.1" protocol="HTTP/1.1" bindOnInit="false"
               connectionTimeout="20000" maxThreads="8" />
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false" />
    </Engine>
  </Service>
</Server>
"#
    )
}

const WEB_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee" version="6.0" metadata-complete="true">
  <servlet>
    <servlet-name>shop</servlet-name>
    <servlet-class>Shop</servlet-class>
    <load-on-startup>1</load-on-startup>
  </servlet>
  <servlet-mapping>
    <servlet-name>shop</servlet-name>
    <url-pattern>/shop/*</url-pattern>
  </servlet-mapping>
  <resource-ref><res-ref-name>jdbc/pg</res-ref-name><res-type>javax.sql.DataSource</res-type></resource-ref>
  <resource-ref><res-ref-name>jdbc/maria</res-ref-name><res-type>javax.sql.DataSource</res-type></resource-ref>
</web-app>
"#;

/// The webapp's context: the DataSources (Tomcat's default factory, DBCP 2,
/// with its defaults: connections made on first use, validated on borrow)
/// and the servlet's parameters. Jar scanning is limited to the webapp's
/// own (none) so deployment does not spend seconds looking for TLDs.
fn context_xml(c: &ShopConfig) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Context>
  <JarScanner scanClassPath="false" scanManifest="false" />
  <Parameter name="downstream" value="{downstream}" override="false" />
  <Parameter name="secret" value="{secret}" override="false" />
  <Resource name="jdbc/pg" auth="Container" type="javax.sql.DataSource"
            driverClassName="org.postgresql.Driver"
            url="jdbc:postgresql://127.0.0.1:{pg_port}/{DB_NAME}"
            username="{PG_USER}" password="" maxTotal="4" />
  <Resource name="jdbc/maria" auth="Container" type="javax.sql.DataSource"
            driverClassName="org.mariadb.jdbc.Driver"
            url="jdbc:mariadb://127.0.0.1:{maria_port}/{DB_NAME}"
            username="{MARIADB_USER}" password="{MARIADB_PASSWORD}" maxTotal="4" />
</Context>
"#,
        downstream = xml_attr(&c.downstream),
        secret = xml_attr(&c.secret),
        pg_port = c.pg.port(),
        maria_port = c.mariadb.port(),
    )
}

fn xml_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;")
}

#[track_caller]
fn compile_servlet(classes: &Path, base: &Path) {
    require_debian("/usr/bin/javac", "default-jdk-headless");
    let src = fixture("tomcat").join("Shop.java");
    let out = Command::new("javac")
        .arg("-d")
        .arg(classes)
        .args(["-cp", SERVLET_API_JAR, "-encoding", "UTF-8"])
        .arg(&src)
        .current_dir(base)
        .output()
        .unwrap_or_else(|e| panic!("running javac: {e}"));
    assert!(
        out.status.success(),
        "javac {} failed:\n{}{}",
        src.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[track_caller]
fn mkdir(p: &PathBuf) {
    std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
}

#[track_caller]
fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}

#[track_caller]
fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
