use std::collections::BTreeMap;

use super::*;

fn rules(include: &str, exclude: &str) -> Rules {
    Rules { include: parse_rule_list(include).unwrap(), exclude: parse_rule_list(exclude).unwrap() }
}

fn pod(namespace: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PodFacts {
    let map = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    PodFacts {
        uid: "u".into(),
        namespace: namespace.into(),
        name: "p".into(),
        labels: map(labels),
        annotations: map(annotations),
        containers: map(&[("abc123", "web")]),
        owners: Vec::new(),
    }
}

#[test]
fn glob_matches_like_a_shell_with_star_across_slashes() {
    assert!(glob("*/nginx", "/usr/sbin/nginx"));
    assert!(glob("/usr/bin/python3*", "/usr/bin/python3.11"));
    assert!(glob("containerd-shim*", "containerd-shim-runc-v2"));
    assert!(glob("a?c", "abc"));
    assert!(glob("*", ""));
    assert!(glob("prod-*-eu", "prod-shop-eu"));
    assert!(!glob("prod-*-eu", "prod-shop-us"));
    assert!(!glob("*/nginx", "/usr/sbin/nginx-debug"));
    assert!(!glob("a?c", "ac"));
    assert!(!glob("", "x"));
    // Backtracking over several stars.
    assert!(glob("*a*b*c", "xxaybbzc"));
    assert!(!glob("*a*b*c", "xxaybbz"));
}

#[test]
fn ports_parse_lists_and_ranges_and_reject_nonsense() {
    assert_eq!(parse_ports("80,8000-8999").unwrap(), vec![(80, 80), (8000, 8999)]);
    assert_eq!(parse_ports(" 443 ").unwrap(), vec![(443, 443)]);
    assert!(parse_ports("9000-8000").unwrap_err().contains("backwards"));
    assert!(parse_ports("http").is_err());
    assert!(parse_ports("70000").is_err());
    assert!(parse_ports("80,").is_err());
}

#[test]
fn rules_parse_every_condition_and_name_what_is_wrong() {
    let r = parse_rule("exe=/usr/sbin/nginx & port=80,8000-8999 & namespace=prod-* & container=web & label:app=shop* & annotation:team=a").unwrap();
    assert_eq!(
        r.conditions,
        vec![
            Condition::Exe("/usr/sbin/nginx".into()),
            Condition::Ports(vec![(80, 80), (8000, 8999)]),
            Condition::Namespace("prod-*".into()),
            Condition::Container("web".into()),
            Condition::Label { key: "app".into(), value: "shop*".into() },
            Condition::Annotation { key: "team".into(), value: "a".into() },
        ]
    );
    assert!(parse_rule("exe").unwrap_err().contains("no '='"));
    assert!(parse_rule("user=root").unwrap_err().contains("unknown condition"));
    assert!(parse_rule("label:=x").unwrap_err().contains("unknown condition"));
    assert!(parse_rule("exe=").unwrap_err().contains("no value"));
    assert_eq!(parse_rule_list("exe=/a; ;port=80").unwrap().len(), 2);
    assert!(parse_rule_list("").unwrap().is_empty());
}

#[test]
fn no_rules_trace_everything_and_include_selects() {
    let view = ProcessView { exe: "/usr/bin/python3.11", ports: &[8080], ..ProcessView::default() };
    assert!(Rules::default().traced(&view));
    assert!(rules("exe=*/python3*", "").traced(&view));
    assert!(rules("port=8000-8999", "").traced(&view));
    assert!(!rules("port=80", "").traced(&view));
    assert!(!rules("exe=*/nginx", "").traced(&view));
    // All conditions of one rule must hold; any rule of the list may.
    assert!(!rules("exe=*/python3*&port=80", "").traced(&view));
    assert!(rules("exe=*/nginx;exe=*/python3*&port=8080", "").traced(&view));
}

#[test]
fn exclude_wins_over_include_and_opt_out_wins_over_both() {
    let view = ProcessView { exe: "/usr/sbin/nginx", ports: &[80], ..ProcessView::default() };
    assert!(!rules("exe=*/nginx", "port=80").traced(&view));
    assert!(!rules("", "exe=*/nginx").traced(&view));
    let opted_out = pod("shop", &[("app", "web")], &[(OPT_OUT_ANNOTATION, "false")]);
    let in_pod = ProcessView { pod: Some(&opted_out), ..view };
    assert!(!rules("label:app=web", "").traced(&in_pod));
    assert!(!Rules::default().traced(&in_pod));
    let opted_in = pod("shop", &[("app", "web")], &[(OPT_OUT_ANNOTATION, "true")]);
    assert!(rules("label:app=web", "").traced(&ProcessView { pod: Some(&opted_in), ..view }));
}

#[test]
fn pod_conditions_need_the_pod_and_match_its_facts() {
    let facts = pod("prod-eu", &[("app", "shop-web")], &[("team", "payments")]);
    let view =
        ProcessView { exe: "/app/server", container_id: Some("abc123"), pod: Some(&facts), ..ProcessView::default() };
    assert!(rules("namespace=prod-*", "").traced(&view));
    assert!(rules("label:app=shop-*", "").traced(&view));
    assert!(rules("annotation:team=pay*", "").traced(&view));
    assert!(rules("container=web", "").traced(&view));
    assert!(!rules("container=db", "").traced(&view));
    assert!(!rules("label:tier=*", "").traced(&view));
    // Another container of the pod (or no container id): no container match.
    assert!(!rules("container=web", "").traced(&ProcessView { container_id: Some("zzz"), ..view }));
    // Without pod facts (no cluster, or not known yet) pod conditions fail.
    let bare = ProcessView { exe: "/app/server", ..ProcessView::default() };
    assert!(!rules("namespace=*", "").traced(&bare));
    assert!(rules("", "namespace=*").traced(&bare));
}

#[test]
fn default_excludes_leave_out_node_daemons_and_kube_system() {
    let r = Rules { include: Vec::new(), exclude: default_excludes() };
    assert_eq!(r.exclude.len(), DEFAULT_EXCLUDES.len(), "every default parses");
    for exe in [
        "/usr/bin/kubelet",
        "/usr/bin/containerd",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/bin/dockerd",
        "/usr/bin/crio",
        "/usr/sbin/runc",
        "/usr/bin/conmon",
        "/usr/lib/systemd/systemd",
        "/lib/systemd/systemd-journald",
    ] {
        assert!(!r.traced(&ProcessView { exe, ..ProcessView::default() }), "{exe}");
    }
    let system = pod("kube-system", &[], &[]);
    assert!(!r.traced(&ProcessView { exe: "/coredns", pod: Some(&system), ..ProcessView::default() }));
    let app = pod("shop", &[], &[]);
    assert!(r.traced(&ProcessView { exe: "/usr/sbin/nginx", pod: Some(&app), ..ProcessView::default() }));
    assert!(!r.uses_ports() && !r.is_empty());
    assert!(rules("port=80", "").uses_ports());
}

#[test]
fn response_header_comes_from_the_first_matching_include_rule_that_sets_it() {
    let r = rules(
        "port=8080&trace_response_header=x-trace-id;exe=*/nginx&trace_response_header=traceresponse;exe=*/envoy&trace_response_header=off",
        "",
    );
    let nginx = ProcessView { exe: "/usr/sbin/nginx", ports: &[8080], ..ProcessView::default() };
    assert_eq!(r.response_header(&nginx, ResponseHeader::Off), ResponseHeader::XTraceId);
    let nginx = ProcessView { exe: "/usr/sbin/nginx", ports: &[80], ..ProcessView::default() };
    assert_eq!(r.response_header(&nginx, ResponseHeader::Off), ResponseHeader::TraceResponse);
    let envoy = ProcessView { exe: "/usr/bin/envoy", ..ProcessView::default() };
    assert_eq!(r.response_header(&envoy, ResponseHeader::TraceResponse), ResponseHeader::Off);
    let other = ProcessView { exe: "/usr/bin/other", ..ProcessView::default() };
    assert_eq!(r.response_header(&other, ResponseHeader::XTraceId), ResponseHeader::XTraceId);
    assert!(r.response_header_wanted(ResponseHeader::Off));
    assert!(!rules("exe=*/envoy&trace_response_header=off", "").response_header_wanted(ResponseHeader::Off));
    assert!(parse_rule("exe=a&trace_response_header=off&trace_response_header=x-trace-id").is_err());
    assert!(parse_rule("exe=a&trace_response_header=sometimes").is_err());
}
