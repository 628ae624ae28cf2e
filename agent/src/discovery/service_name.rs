//! Naming a service from outside: the program an interpreter runs, else the
//! executable (see [`derive_service_name`]).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Runtime {
    Python,
    Java,
    Node,
    Ruby,
    Php,
    PhpFpm,
    Perl,
    Bun,
    Deno,
    Dotnet,
}

impl Runtime {
    /// From an executable name with its version suffix removed
    /// (`python3.11` -> python, `php-fpm8.2` -> php-fpm, `nodejs` -> node).
    fn from_name(name: &str) -> Option<Runtime> {
        let stem = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        Some(match stem {
            "python" | "pypy" => Runtime::Python,
            "java" => Runtime::Java,
            "node" | "nodejs" => Runtime::Node,
            "ruby" => Runtime::Ruby,
            "php" | "php-cgi" | "php-cli" => Runtime::Php,
            "php-fpm" => Runtime::PhpFpm,
            "perl" => Runtime::Perl,
            "bun" => Runtime::Bun,
            "deno" => Runtime::Deno,
            "dotnet" => Runtime::Dotnet,
            _ => return None,
        })
    }

    /// The executable decides; argv[0] only when the executable is unknown
    /// or not an interpreter (a shim whose exe link was unreadable).
    pub(super) fn detect(exe_name: &str, argv0_name: &str) -> Option<Runtime> {
        Runtime::from_name(exe_name).or_else(|| Runtime::from_name(argv0_name))
    }

    /// `process.runtime.name`, following what the OTel SDKs of each language
    /// report where that is knowable from outside.
    pub(super) fn runtime_name(self, exe_name: &str, argv0_name: &str) -> &'static str {
        match self {
            Runtime::Python if exe_name.starts_with("pypy") || argv0_name.starts_with("pypy") => "pypy",
            Runtime::Python => "cpython",
            Runtime::Java => "java",
            Runtime::Node => "nodejs",
            Runtime::Ruby => "ruby",
            Runtime::Php | Runtime::PhpFpm => "php",
            Runtime::Perl => "perl",
            Runtime::Bun => "bun",
            Runtime::Deno => "deno",
            Runtime::Dotnet => "dotnet",
        }
    }
}

/// A service name from the executable and command line alone.
///
/// For interpreters, the program they run:
/// - Python: the script (`app.py` -> `app`; `__main__.py` -> its directory),
///   the `-m` module (`http.server`); for app-server launchers (gunicorn,
///   uvicorn, hypercorn, daphne, granian) the application's package: the
///   first part of the module path that is not a generic name
///   (`myapp.wsgi:application` -> `myapp`, `src.billing.main:app` ->
///   `billing`, `app.main:app` -> `app`), for celery the `-A` app; a rewritten title
///   with the app in brackets (`gunicorn: worker [myapp.wsgi:application]`)
///   counts too.
/// - Java: the `-jar` file without version (`shop-1.2.jar` -> `shop`), else
///   the main class's simple name; Tomcat's launcher class gives `tomcat`.
/// - Node, Bun, Deno: the script; for generic entry files (index, server,
///   app, main) the nearest meaningful directory (`/srv/api/server.js` -> `api`).
/// - Ruby, PHP, Perl: the script; .NET: the `.dll`; php-fpm: `php-fpm`.
///
/// Otherwise (and for `python -c ...`), the executable name (argv[0]'s for
/// busybox applets). Empty only when nothing at all is known.
pub fn derive_service_name(exe_name: &str, argv: &[String]) -> String {
    let argv0_name = argv.first().map(|a| basename(command_of(a))).unwrap_or("");
    if let Some(runtime) = Runtime::detect(exe_name, argv0_name) {
        if let Some(name) = interpreter_program(runtime, argv).filter(|n| !n.is_empty()) {
            return name;
        }
    }
    if !exe_name.is_empty() && exe_name != "busybox" {
        return exe_name.to_owned();
    }
    argv0_name.to_owned()
}

/// `process.command`: argv[0] only. Processes that rewrite their title
/// (`php-fpm: pool www`, `redis-server *:6379`, `postgres: user db ...`)
/// leave one string that may carry arbitrary text, so keep its first word
/// (an executable path with a space in it is cut too: rare, and harmless).
pub(super) fn command_of(argv0: &str) -> &str {
    let cut = argv0.find(": ").map(|i| &argv0[..i]).unwrap_or(argv0);
    cut.split_whitespace().next().unwrap_or("")
}

pub(super) fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn interpreter_program(runtime: Runtime, argv: &[String]) -> Option<String> {
    // A single argument with spaces is a rewritten process title; read its
    // words as arguments.
    let title_words: Vec<String>;
    let args: &[String] = match argv {
        [only] if only.contains(char::is_whitespace) => {
            if matches!(runtime, Runtime::Python | Runtime::Ruby) {
                if let Some(inner) = bracketed(only) {
                    return Some(app_module_name(inner));
                }
            }
            title_words = only.split_whitespace().skip(1).map(str::to_owned).collect();
            &title_words
        }
        [_, rest @ ..] => rest,
        [] => &[],
    };
    match runtime {
        Runtime::Python => python_program(args),
        Runtime::Java => java_program(args),
        Runtime::Node => script_after_options(
            args,
            &[
                "-r",
                "--require",
                "--import",
                "--loader",
                "--experimental-loader",
                "--title",
                "-C",
                "--conditions",
                "--input-type",
            ],
            &["-e", "--eval", "-p", "--print"],
            &[],
        )
        .map(|s| js_entry_name(&s)),
        Runtime::Bun => script_after_options(
            args,
            &["--cwd", "-c", "--config", "--env-file", "-r", "--preload"],
            &["-e", "--eval", "-p", "--print"],
            &["run"],
        )
        .map(|s| js_entry_name(&s)),
        Runtime::Deno => script_after_options(
            args,
            &["-c", "--config", "--import-map", "--location", "--cert", "--env-file"],
            &["eval"],
            &["run", "serve"],
        )
        .map(|s| js_entry_name(&s)),
        Runtime::Ruby => script_after_options(args, &["-I", "-r", "-C", "-E", "-x"], &["-e"], &[])
            .map(|s| strip_ext(basename(&s), &[".rb"]).to_owned()),
        Runtime::Php => {
            if let Some(i) = args.iter().position(|a| a == "-f") {
                return args.get(i + 1).map(|s| strip_ext(basename(s), &[".php"]).to_owned());
            }
            script_after_options(args, &["-c", "-d", "-z", "-t", "-S"], &["-r", "-a"], &[])
                .map(|s| strip_ext(basename(&s), &[".php"]).to_owned())
        }
        Runtime::PhpFpm => Some("php-fpm".to_owned()),
        Runtime::Perl => perl_program(argv, args),
        Runtime::Dotnet => script_after_options(
            args,
            &[
                "--roll-forward",
                "--additionalprobingpath",
                "--additional-deps",
                "--depsfile",
                "--runtimeconfig",
                "--fx-version",
            ],
            &[],
            &["exec"],
        )
        .filter(|s| s.ends_with(".dll"))
        .map(|s| strip_ext(basename(&s), &[".dll"]).to_owned()),
    }
}

fn bracketed(title: &str) -> Option<&str> {
    let start = title.rfind('[')?;
    let end = start + title[start..].find(']')?;
    let inner = title[start + 1..end].trim();
    (!inner.is_empty()).then_some(inner)
}

fn strip_ext<'a>(name: &'a str, exts: &[&str]) -> &'a str {
    exts.iter().find_map(|e| name.strip_suffix(e)).filter(|s| !s.is_empty()).unwrap_or(name)
}

/// The first non-option argument, skipping `value_opts` with their value and
/// leading `subcommands`; None when an option in `no_script` (eval) comes
/// first.
fn script_after_options(
    args: &[String],
    value_opts: &[&str],
    no_script: &[&str],
    subcommands: &[&str],
) -> Option<String> {
    let mut i = 0;
    let mut seen_positional = false;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            return args.get(i + 1).cloned();
        }
        if no_script.contains(&a) {
            return None;
        }
        if value_opts.contains(&a) {
            i += 2;
            continue;
        }
        if a.starts_with('-') || a.starts_with('@') {
            i += 1;
            continue;
        }
        if !seen_positional && subcommands.contains(&a) {
            seen_positional = true;
            i += 1;
            continue;
        }
        return Some(a.to_owned());
    }
    None
}

const PY_LAUNCHERS: &[&str] = &["gunicorn", "uvicorn", "hypercorn", "daphne", "granian", "waitress-serve"];

fn python_program(args: &[String]) -> Option<String> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--check-hash-based-pycs" {
            i += 2;
            continue;
        }
        if a == "-" {
            return None;
        }
        if a == "--" {
            return args.get(i + 1).map(|s| python_script(s, &args[i + 2..]));
        }
        if a.starts_with("--") {
            i += 1;
            continue;
        }
        if let Some(flags) = a.strip_prefix('-') {
            // Clustered flags (`-u`, `-OO`, `-um mod`, `-Wignore`): c, m, W and
            // X take the rest of the cluster or the next argument.
            let mut consumed_next = false;
            for (pos, c) in flags.char_indices() {
                if matches!(c, 'c' | 'm' | 'W' | 'X') {
                    let rest = &flags[pos + 1..];
                    let (value, value_idx) = if rest.is_empty() {
                        consumed_next = true;
                        (args.get(i + 1).map(String::as_str), i + 1)
                    } else {
                        (Some(rest), i)
                    };
                    match c {
                        'c' => return None,
                        'm' => return value.map(|m| python_module(m, &args[(value_idx + 1).min(args.len())..])),
                        _ => break,
                    }
                }
            }
            i += if consumed_next { 2 } else { 1 };
            continue;
        }
        return Some(python_script(a, &args[i + 1..]));
    }
    None
}

fn python_module(module: &str, rest: &[String]) -> String {
    let top = module.split('.').next().unwrap_or(module);
    if PY_LAUNCHERS.contains(&top) || top == "celery" {
        return python_launcher_app(top, rest);
    }
    module.to_owned()
}

fn python_script(path: &str, rest: &[String]) -> String {
    let base = basename(path);
    let stem = strip_ext(base, &[".py", ".pyc", ".pyz"]);
    if stem == "__main__" {
        let dir = parent_dirs(path).next();
        if let Some(dir) = dir {
            return dir.to_owned();
        }
    }
    if PY_LAUNCHERS.contains(&stem) || stem == "celery" {
        return python_launcher_app(stem, rest);
    }
    stem.to_owned()
}

/// The application an app server runs, else the launcher's own name.
fn python_launcher_app(launcher: &str, args: &[String]) -> String {
    if launcher == "celery" {
        for (i, a) in args.iter().enumerate() {
            let app = if a == "-A" || a == "--app" {
                args.get(i + 1).map(String::as_str)
            } else if let Some(v) = a.strip_prefix("--app=") {
                Some(v)
            } else {
                a.strip_prefix("-A").filter(|v| !v.is_empty())
            };
            if let Some(app) = app {
                let root = app.split(['.', ':']).next().unwrap_or(app);
                if !root.is_empty() {
                    return root.to_owned();
                }
            }
        }
        return launcher.to_owned();
    }
    // Options of gunicorn/uvicorn/hypercorn/daphne that take a separate value.
    const VALUE_OPTS: &[&str] = &[
        "-c",
        "--config",
        "-b",
        "--bind",
        "-w",
        "--workers",
        "-k",
        "--worker-class",
        "--chdir",
        "--pythonpath",
        "-u",
        "--user",
        "-g",
        "--group",
        "--log-level",
        "--access-logfile",
        "--error-logfile",
        "--log-config",
        "-p",
        "--pid",
        "--host",
        "--port",
        "--app-dir",
        "--env-file",
        "--uds",
        "--threads",
        "-t",
        "--timeout",
        "-e",
        "--env",
        "--name",
        "-n",
    ];
    let mut positionals = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if VALUE_OPTS.contains(&a) {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            positionals.push(a);
        }
        i += 1;
    }
    // `module:callable` is unambiguous; addresses (`0.0.0.0:8000`,
    // `localhost:8000`, `unix:/x`) fail the identifier checks.
    if let Some(spec) = positionals.iter().find(|a| is_app_spec(a)) {
        return app_module_name(spec);
    }
    // gunicorn also accepts a bare module (`myapp.wsgi`), last on the line.
    if let Some(spec) = positionals.iter().rev().find(|a| is_dotted_identifier(a)) {
        return app_module_name(spec);
    }
    launcher.to_owned()
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_') && chars.all(|c| c.is_alphanumeric() || c == '_')
}

fn is_dotted_identifier(s: &str) -> bool {
    s.split('.').all(is_identifier)
}

fn is_app_spec(s: &str) -> bool {
    match s.split_once(':') {
        Some((module, callable)) => {
            is_dotted_identifier(module) && callable.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
        }
        None => false,
    }
}

/// `myapp.wsgi:application` -> `myapp`: the first part of the module path
/// that is not a name every project uses (the project's package, usually);
/// when all are generic (`app.main`), the first part.
fn app_module_name(spec: &str) -> String {
    const GENERIC: &[&str] = &["wsgi", "asgi", "app", "application", "main", "server", "__main__", "src"];
    let module = spec.split(':').next().unwrap_or(spec);
    let parts: Vec<&str> = module.split('.').filter(|p| !p.is_empty()).collect();
    let meaningful = parts.iter().find(|p| !GENERIC.contains(p));
    match (meaningful, parts.first()) {
        (Some(name), _) => (*name).to_owned(),
        (None, Some(first)) => (*first).to_owned(),
        (None, None) => module.to_owned(),
    }
}

/// Main classes of servlet containers and the service name they give.
const JAVA_CONTAINER_MAINS: &[(&str, &str)] = &[("org.apache.catalina.startup.Bootstrap", "tomcat")];

fn java_program(args: &[String]) -> Option<String> {
    const VALUE_OPTS: &[&str] = &[
        "-cp",
        "-classpath",
        "--class-path",
        "-p",
        "--module-path",
        "--upgrade-module-path",
        "--add-modules",
        "--limit-modules",
        "--add-reads",
        "--add-exports",
        "--add-opens",
        "--patch-module",
        "--enable-native-access",
        "--source",
    ];
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "-jar" {
            return args.get(i + 1).map(|jar| jar_name(jar));
        }
        if a == "-m" || a == "--module" {
            return args.get(i + 1).map(|m| java_module_main(m));
        }
        if let Some(m) = a.strip_prefix("--module=") {
            return Some(java_module_main(m));
        }
        if VALUE_OPTS.contains(&a) {
            i += 2;
            continue;
        }
        if a.starts_with('-') || a.starts_with('@') {
            i += 1;
            continue;
        }
        // Source-file mode (`java Hello.java`) or a main class.
        if let Some(stem) = basename(a).strip_suffix(".java") {
            return Some(stem.to_owned());
        }
        // Servlet containers start from a launcher class whose simple name
        // says nothing about the service (`Bootstrap`): name the container.
        if let Some(container) = JAVA_CONTAINER_MAINS.iter().find_map(|(main, name)| (*main == a).then_some(*name)) {
            return Some(container.to_owned());
        }
        return Some(a.rsplit('.').next().unwrap_or(a).to_owned());
    }
    None
}

fn java_module_main(spec: &str) -> String {
    match spec.split_once('/') {
        Some((_, class)) => class.rsplit('.').next().unwrap_or(class).to_owned(),
        None => spec.rsplit('.').next().unwrap_or(spec).to_owned(),
    }
}

/// `/opt/shop-1.2.3-SNAPSHOT.jar` -> `shop`: the version is not part of the
/// service's identity.
fn jar_name(path: &str) -> String {
    let stem = strip_ext(basename(path), &[".jar", ".war"]);
    let mut kept: Vec<&str> = Vec::new();
    for part in stem.split('-') {
        if !kept.is_empty() && part.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            break;
        }
        kept.push(part);
    }
    kept.join("-")
}

fn parent_dirs(path: &str) -> impl Iterator<Item = &str> {
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    parts.pop();
    parts.into_iter().rev()
}

/// Perl: a PSGI server (starman, plackup, twiggy) runs the application in
/// its `.psgi` file, which names the service like a JavaScript entry file
/// (`/srv/shop/app.psgi` -> `shop`), whether the server left its command
/// line alone or rewrote its title (`starman worker --listen :5000
/// /srv/shop/app.psgi`). Otherwise a rewritten title's first word, the name
/// the program gave itself (its other words are roles and options:
/// `starman master ...`, `myjob: idle`), else the script.
fn perl_program(argv: &[String], args: &[String]) -> Option<String> {
    let psgi = args.iter().find_map(|a| {
        // `--app=/srv/shop/app.psgi` as well as a plain argument.
        let value = if a.starts_with('-') { a.split_once('=')?.1 } else { a.as_str() };
        value.ends_with(".psgi").then_some(value)
    });
    if let Some(path) = psgi {
        return Some(entry_name(path, &[".psgi"]));
    }
    if let [title] = argv {
        if title.contains(char::is_whitespace) {
            return Some(basename(command_of(title)).to_owned());
        }
    }
    script_after_options(args, &["-I"], &["-e", "-E"], &[])
        .map(|s| strip_ext(basename(&s), &[".pl", ".pm", ".cgi"]).to_owned())
}

fn js_entry_name(path: &str) -> String {
    entry_name(path, &[".js", ".mjs", ".cjs", ".ts", ".mts", ".cts", ".jsx", ".tsx"])
}

/// The file's stem, or for a generic one (`index`, `app`, ...) the nearest
/// directory that is not generic itself (`/srv/api/src/index.js` -> `api`).
fn entry_name(path: &str, exts: &[&str]) -> String {
    const GENERIC_FILES: &[&str] = &["index", "server", "app", "main", "mod"];
    const GENERIC_DIRS: &[&str] =
        &["src", "dist", "build", "lib", "bin", "out", "server", "app", "..", "srv", "opt", "usr", "home"];
    let stem = strip_ext(basename(path), exts);
    if GENERIC_FILES.contains(&stem) {
        if let Some(dir) = parent_dirs(path).find(|d| !GENERIC_DIRS.contains(d)) {
            return dir.to_owned();
        }
    }
    stem.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn derived_service_names() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("python3.11", &["python3", "app.py"], "app"),
            ("python3.11", &["python3", "-m", "http.server", "8000"], "http.server"),
            ("python3.11", &["python3", "-u", "/srv/x/manage.py", "runserver"], "manage"),
            ("python3.11", &["python3", "-um", "http.server"], "http.server"),
            ("python3.11", &["python3", "-W", "ignore", "-X", "dev", "svc.py"], "svc"),
            ("python3.11", &["python3", "/srv/tool/__main__.py"], "tool"),
            ("python3.11", &["python3", "-c", "print(1)"], "python3.11"),
            (
                "python3.11",
                &["/usr/bin/python3", "/usr/local/bin/gunicorn", "-w", "2", "myapp.wsgi:application"],
                "myapp",
            ),
            (
                "python3.11",
                &["python3", "/venv/bin/gunicorn", "-b", "0.0.0.0:8000", "-k", "gevent", "shop.wsgi"],
                "shop",
            ),
            ("python3.11", &["python3", "/venv/bin/uvicorn", "app.main:app", "--port", "8000"], "app"),
            ("python3.11", &["python3", "-m", "uvicorn", "orders.api:app"], "orders"),
            ("python3.11", &["python3", "/venv/bin/uvicorn", "src.billing.main:app"], "billing"),
            ("python3.11", &["python3", "/venv/bin/gunicorn", "-c", "conf.py"], "gunicorn"),
            ("python3.11", &["python3", "/venv/bin/celery", "-A", "proj", "worker"], "proj"),
            ("python3.11", &["gunicorn: worker [myapp.wsgi:application]"], "myapp"),
            ("pypy3", &["pypy3", "bench.py"], "bench"),
            ("java", &["java", "-Xmx1g", "-jar", "/opt/shop.jar"], "shop"),
            ("java", &["java", "-jar", "petclinic-3.1.0-SNAPSHOT.jar"], "petclinic"),
            ("java", &["java", "-cp", "/a.jar:/b.jar", "-Dx=y", "com.acme.OrderService"], "OrderService"),
            ("java", &["java", "-m", "com.acme/com.acme.Main"], "Main"),
            ("java", &["java", "Hello.java"], "Hello"),
            (
                "java",
                &[
                    "/usr/bin/java",
                    "-Djava.util.logging.manager=org.apache.juli.ClassLoaderLogManager",
                    "-classpath",
                    "/usr/share/tomcat10/bin/bootstrap.jar:/usr/share/tomcat10/bin/tomcat-juli.jar",
                    "-Dcatalina.base=/var/lib/tomcat10",
                    "org.apache.catalina.startup.Bootstrap",
                    "start",
                ],
                "tomcat",
            ),
            ("node", &["node", "/srv/api/server.js"], "api"),
            ("node", &["node", "/srv/api/src/index.js"], "api"),
            ("node", &["node", "--require", "dotenv/config", "worker.mjs"], "worker"),
            ("node", &["node", "-e", "1"], "node"),
            ("ruby3.1", &["ruby", "-I", "lib", "bin/sidekiq"], "sidekiq"),
            ("ruby", &["puma 6.4.0 (tcp://0.0.0.0:9292) [storefront]"], "storefront"),
            ("php8.2", &["php", "-d", "x=1", "artisan", "serve"], "artisan"),
            ("php-fpm8.2", &["php-fpm: pool www"], "php-fpm"),
            ("php-fpm8.2", &["php-fpm: master process (/etc/php/8.2/fpm/php-fpm.conf)"], "php-fpm"),
            ("perl", &["perl", "-w", "/usr/bin/report.pl"], "report"),
            // Starman rewrites its title: the application, not the role word.
            ("perl", &["starman worker --listen 127.0.0.1:5000 --workers 4 /srv/shop/app.psgi"], "shop"),
            ("perl", &["starman master --listen :5000 bin/app.psgi"], "app"),
            ("perl", &["starman master --listen :5000 /srv/orders/bin/app.psgi"], "orders"),
            ("perl", &["starman worker --listen :5000"], "starman"),
            (
                "perl5.36.0",
                &["/usr/bin/perl", "/usr/bin/starman", "--disable-proctitle", "/srv/billing.psgi"],
                "billing",
            ),
            ("perl", &["/usr/bin/perl", "/usr/bin/plackup", "--app=/srv/shop/app.psgi", "-p", "5000"], "shop"),
            ("perl", &["/usr/bin/perl", "/usr/bin/plackup", "-p", "5000"], "plackup"),
            ("perl", &["mailqueue: idle"], "mailqueue"),
            // A CGI script exec'd through its #! line.
            ("perl", &["/usr/bin/perl", "/var/www/cgi-bin/item.cgi"], "item"),
            ("bun", &["bun", "run", "/srv/chat/index.ts"], "chat"),
            ("deno", &["deno", "run", "--allow-net", "https://example.com/file_server.ts"], "file_server"),
            ("dotnet", &["dotnet", "exec", "Orders.Api.dll"], "Orders.Api"),
            ("dotnet", &["dotnet", "build"], "dotnet"),
            ("nginx", &["nginx: worker process"], "nginx"),
            ("curl", &["curl", "-u", "user:secret", "http://x"], "curl"),
            ("busybox", &["wget", "http://x"], "wget"),
            ("", &["/usr/bin/python3", "job.py"], "job"),
            ("", &[], ""),
        ];
        for (exe, argv, want) in cases {
            assert_eq!(derive_service_name(exe, &args(argv)), *want, "exe {exe:?} argv {argv:?}");
        }
    }

    #[test]
    fn command_is_argv0_without_title_text() {
        assert_eq!(command_of("/usr/bin/python3"), "/usr/bin/python3");
        assert_eq!(command_of("php-fpm: pool www"), "php-fpm");
        assert_eq!(command_of("postgres: alice shop 10.0.0.1(5123) idle"), "postgres");
        assert_eq!(command_of("redis-server *:6379"), "redis-server");
    }
}
