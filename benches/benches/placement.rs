//! The scheduler's placement decision in-process: one pod placed among 1,000 nodes that already
//! hold 10,000 pods (so scoring sees realistic per-node lists), as `shoal-controllers` runs it.

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use shoal_controllers::scheduler::placement::{NodeView, PlacedPod, PodView, place};

fn nodes(count: usize, pods_each: usize) -> Vec<NodeView> {
    (0..count)
        .map(|i| {
            let node = json!({
                "metadata": {"name": format!("hollow-{i}"), "labels": {"kubernetes.io/hostname": format!("hollow-{i}"), "shoal.dev/wasm": "true", "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
                "spec": {},
                "status": {"allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]},
            });
            let mut view = NodeView::from_node(&node);
            for p in 0..pods_each {
                view.add_pod(PlacedPod {
                    key: format!("default/p-{i}-{p}"),
                    namespace: "default".into(),
                    labels: json!({"app": format!("app-{}", p % 50)}).as_object().cloned().unwrap_or_default(),
                    owner_uid: Some(format!("rs-{}", p % 50)),
                    anti_affinity: Vec::new(),
                });
                view.requested.milli_cpu += 10;
                view.requested.memory += 16 << 20;
                view.requested.pods += 1;
            }
            view
        })
        .collect()
}

fn placement(c: &mut Criterion) {
    let cluster = nodes(1000, 10);
    let pod = PodView::from_pod(&json!({
        "metadata": {"namespace": "default", "name": "p", "labels": {"app": "app-7"}, "ownerReferences": [{"uid": "rs-7", "controller": true, "kind": "ReplicaSet", "name": "rs"}]},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    }));
    let mut start = 0;
    c.bench_function("place one pod among 1000 nodes holding 10000 pods", |b| {
        b.iter(|| {
            start += 1;
            place(&pod, &cluster, start % 1000).expect("fits")
        })
    });
    let spread = PodView::from_pod(&json!({
        "metadata": {"namespace": "default", "name": "p", "labels": {"app": "app-7"}},
        "spec": {"containers": [{"name": "c", "image": "x"}], "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "app-7"}}}]},
    }));
    c.bench_function("place with a zone topology spread constraint", |b| {
        b.iter(|| {
            start += 1;
            place(&spread, &cluster, start % 1000).expect("fits")
        })
    });
}

criterion_group!(benches, placement);
criterion_main!(benches);
