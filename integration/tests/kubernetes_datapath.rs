//! Pods of a real kube-apiserver policed by the eBPF datapath: a node of
//! network namespaces (integration/src/node.rs) whose pods are also pods of
//! the API server (bound to the node, their addresses reported through the
//! status subresource as a kubelet would). weir finds each local pod's
//! host-side interface from its address, attaches its programs when the pod
//! gets its address and takes them off when the pod goes; policies are the
//! API server's. weir reaches the API server from inside the node through a
//! bridge on the node's loopback.

use std::time::Duration;

use weir::observe::flow::Verdict;
use weir_integration::kube::Kube;
use weir_integration::node::{Node, SERVER_HTTP_POLICY, peer_script};
use weir_integration::wait_for;

#[test]
fn pods_of_the_api_server_are_policed_in_the_kernel() {
    let mut kube = Kube::start();
    kube.install_weir();
    kube.namespace("shop", &[]);
    let mut node = Node::new(&["cli", "srv", "oth"]);
    let port = kube.bridge_into(&node.netns);
    let kubeconfig = kube.kubeconfig_as("weir-node", Some(port));
    node.enter();
    let (client, server, other) = (node.pod("cli").ip, node.pod("srv").ip, node.pod("oth").ip);
    node.serve("srv", "http server", "python3", &[&peer_script(), "http", &server.to_string(), "80"]);

    let name = node.netns.clone();
    kube.pod("shop", "cli", &name, &[("app", "client")]);
    kube.pod("shop", "srv", &name, &[("app", "server")]);
    kube.pod_ip("shop", "cli", &client.to_string());
    kube.pod_ip("shop", "srv", &server.to_string());
    kube.apply(&SERVER_HTTP_POLICY.replace("name: server-http}", "name: server-http, namespace: shop}"));
    let config = format!("admin: ADMIN\nworkers: 1\nlog_flows: true\ndatapath:\n  bpffs: {}\n", node.bpffs);
    let args = ["--kubernetes", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", &name];
    node.start_weir_with(&config, &args);

    let url = |path: &str| format!("http://{server}{path}");
    wait_for("the server in its pod", Duration::from_secs(20), || node.curl("cli", &url("/public/ready")).0 == 200);
    // weir started on every local pod with its identity: its first model
    // polices them (no reload came since)
    assert_eq!(node.weir().generation(), 1, "{}", node.weir().log());
    let (status, body) = node.curl("cli", &url("/private"));
    assert_eq!((status, body.as_str()), (403, "Access denied\r\n"), "{}", node.weir().log());
    let status = node.datapath_status();
    assert!(status.contains(&node.pod("cli").interface) && status.contains(&node.pod("srv").interface), "{status}");
    assert!(!status.contains(&node.pod("oth").interface), "no pod has oth's address yet: {status}");
    let mut denied = None;
    wait_for("the denial flow", Duration::from_secs(10), || {
        denied = node.weir().flows("").into_iter().find(|f| f.verdict == Verdict::Denied);
        denied.is_some()
    });
    let denied = denied.unwrap();
    let labels = &denied.source.labels;
    assert!(labels.iter().any(|l| l == "k8s:app=client"), "{denied:?}");
    assert!(labels.iter().any(|l| l == "k8s:io.kubernetes.pod.namespace=shop"), "{denied:?}");
    assert!(labels.iter().any(|l| l == "k8s:io.cilium.k8s.policy.serviceaccount=default"), "{denied:?}");
    // flows speak Kubernetes: the pods by namespace and name
    assert_eq!((denied.source.namespace.as_deref(), denied.source.pod.as_deref()), (Some("shop"), Some("cli")));
    assert_eq!(denied.destination.pod.as_deref(), Some("srv"), "{denied:?}");
    let by_pod = node.weir().flows("pod=shop%2Fcli&verdict=denied");
    assert!(!by_pod.is_empty() && by_pod.iter().all(|f| f.source.pod.as_deref() == Some("cli")), "{by_pod:?}");
    assert!(node.weir().flows("namespace=elsewhere").is_empty());

    // a pod that arrives while weir runs: its programs go on when it gets
    // its address, and its policy holds (ingressDeny: dropped in the kernel)
    kube.pod("shop", "oth", &name, &[("app", "other")]);
    kube.pod_ip("shop", "oth", &other.to_string());
    let interface = node.pod("oth").interface.clone();
    wait_for("oth's programs attached", Duration::from_secs(20), || node.datapath_status().contains(&interface));
    wait_for("oth refused", Duration::from_secs(10), || node.curl("oth", &url("/public/a")).0 == 0);
    assert_eq!(node.curl("cli", &url("/public/a")).0, 200);

    // relabelled: a new identity, allowed as a client
    kube.must(&["label", "pod", "oth", "-n", "shop", "app=client", "--overwrite"], "");
    wait_for("the relabelled pod allowed", Duration::from_secs(20), || node.curl("oth", &url("/public/a")).0 == 200);

    // the pod goes: so do its programs
    kube.delete_pod("shop", "oth");
    wait_for("oth's programs taken off", Duration::from_secs(20), || !node.datapath_status().contains(&interface));
    assert_eq!(node.curl("cli", &url("/public/a")).0, 200);
}

/// Dual-stack pods of the API server (two addresses in `podIPs`) are policed
/// over IPv6 as over IPv4, with their Kubernetes identities; a pod with an
/// IPv6 address only is found by its IPv6 host route, and may send no IPv4.
#[test]
fn dual_stack_and_ipv6_only_pods_are_policed_in_the_kernel() {
    let mut kube = Kube::start();
    kube.install_weir();
    kube.namespace("shop", &[]);
    let mut node = Node::dual_stack(&["cli", "srv", "six"]);
    let port = kube.bridge_into(&node.netns);
    let kubeconfig = kube.kubeconfig_as("weir-node", Some(port));
    node.enter();
    let ip6 = |node: &Node, pod: &str| node.pod(pod).ip6.unwrap().to_string();
    let (server, server6) = (node.pod("srv").ip.to_string(), ip6(&node, "srv"));
    node.serve("srv", "http v4", "python3", &[&peer_script(), "http", &server, "80"]);
    node.serve("srv", "http v6", "python3", &[&peer_script(), "http", &server6, "80"]);

    let name = node.netns.clone();
    kube.pod("shop", "cli", &name, &[("app", "client")]);
    kube.pod("shop", "srv", &name, &[("app", "server")]);
    kube.pod("shop", "six", &name, &[("app", "client")]);
    kube.pod_ips("shop", "cli", &[&node.pod("cli").ip.to_string(), &ip6(&node, "cli")]);
    kube.pod_ips("shop", "srv", &[&server, &server6]);
    kube.pod_ips("shop", "six", &[&ip6(&node, "six")]);
    kube.apply(&SERVER_HTTP_POLICY.replace("name: server-http}", "name: server-http, namespace: shop}"));
    let config = format!("admin: ADMIN\nworkers: 1\nlog_flows: true\ndatapath:\n  bpffs: {}\n", node.bpffs);
    let args = ["--kubernetes", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", &name];
    node.start_weir_with(&config, &args);

    let url6 = |path: &str| format!("http://[{server6}]{path}");
    wait_for("the server over IPv6", Duration::from_secs(20), || node.curl("cli", &url6("/public/ready")).0 == 200);
    let url4 = format!("http://{server}/public/ready");
    wait_for("the server over IPv4", Duration::from_secs(20), || node.curl("cli", &url4).0 == 200);
    let (status, body) = node.curl("cli", &url6("/private"));
    assert_eq!((status, body.as_str()), (403, "Access denied\r\n"), "{}", node.weir().log());
    let denied = node.weir().wait_flow("", "the IPv6 denial", |f| f.verdict == Verdict::Denied);
    assert_eq!((denied.source.namespace.as_deref(), denied.source.pod.as_deref()), (Some("shop"), Some("cli")));
    assert_eq!(denied.source.address.ip().to_string(), ip6(&node, "cli"));
    let (status, body) = node.curl("cli", &format!("http://{server}/public/a"));
    assert_eq!(status, 200, "IPv4 still: {body}\n{:#?}", node.weir().flows("").last());

    // the IPv6-only pod: attached by its IPv6 route, a client over IPv6,
    // and its IPv4 (it has no IPv4 address in Kubernetes) is refused
    let status = node.datapath_status();
    let six = format!("endpoint {} 0.0.0.0,{} ", node.pod("six").interface, ip6(&node, "six"));
    assert!(status.lines().any(|l| l.starts_with(&six)), "no {six:?} in:\n{status}");
    assert_eq!(node.curl("six", &url6("/public/a")).0, 200);
    assert_eq!(node.curl("six", &format!("http://{server}/public/a")).0, 0, "IPv4 from an IPv6-only pod");
}
