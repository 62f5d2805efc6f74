//! Service addresses: every Service (but ExternalName and headless ones) gets a `clusterIP` from
//! the service CIDR (`--service-cidr`, default `10.43.0.0/16`, as k3s), and every port of a
//! NodePort or LoadBalancer Service a `nodePort` from 30000–32767. Allocation is decided from the
//! Services stored, under one lock held until the write is applied, so two creates never get the
//! same address.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};
use shoal_api::FieldError;

pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// An IPv4 range in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = text.split_once('/').ok_or_else(|| format!("{text:?} is not in CIDR notation (ADDRESS/PREFIX)"))?;
        let address: Ipv4Addr = address.parse().map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (8..=30).contains(p)).ok_or_else(|| format!("the prefix length of {text:?} must be between 8 and 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Self { base: u32::from(address) & mask, prefix })
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address).wrapping_sub(self.base) < self.size()
    }

    /// The first usable address, which Kubernetes gives the `default/kubernetes` Service.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Addresses and ports taken by stored Services other than the one being written.
#[derive(Default, Debug)]
pub struct Taken {
    pub ips: HashSet<Ipv4Addr>,
    pub node_ports: HashSet<u16>,
}

impl Taken {
    pub fn of<'a>(services: impl IntoIterator<Item = &'a Value>, except_uid: Option<&str>) -> Self {
        let mut taken = Self::default();
        for service in services {
            if except_uid.is_some_and(|uid| service["metadata"]["uid"].as_str() == Some(uid)) {
                continue;
            }
            if let Some(ip) = service["spec"]["clusterIP"].as_str().and_then(|ip| ip.parse().ok()) {
                taken.ips.insert(ip);
            }
            for port in service["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(node_port) = port["nodePort"].as_u64() {
                    taken.node_ports.insert(node_port as u16);
                }
            }
        }
        taken
    }
}

fn uses_node_ports(spec: &Value) -> bool {
    matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
}

/// Fills in `spec.clusterIP`, `spec.clusterIPs` and the ports' `nodePort`s of `service`, keeping
/// what `previous` (the stored object, on update) had, and checking any the user chose.
pub fn assign(service: &mut Value, previous: Option<&Value>, cidr: &Cidr, taken: &Taken, seed: u64) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(spec) = service.get_mut("spec").filter(|s| s.is_object()) else { return Ok(()) };
    if spec["type"] == "ExternalName" {
        if let Some(map) = spec.as_object_mut() {
            map.remove("clusterIP");
            map.remove("clusterIPs");
        }
        return Ok(());
    }
    // The cluster IP: kept on update, checked when chosen, allocated otherwise.
    let requested = spec["clusterIP"].as_str().filter(|ip| !ip.is_empty()).map(str::to_owned);
    let kept = previous.and_then(|p| p["spec"]["clusterIP"].as_str()).filter(|ip| !ip.is_empty()).map(str::to_owned);
    let ip = match (requested, kept) {
        (None, Some(kept)) => Some(kept),
        (Some(requested), Some(kept)) if requested == kept => Some(kept),
        (Some(requested), _) if requested == "None" => Some(requested),
        (Some(requested), _) => match requested.parse::<Ipv4Addr>() {
            Err(_) => {
                errors.push(FieldError::invalid("spec.clusterIP", json!(requested), "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"));
                None
            }
            Ok(address) if !cidr.contains(address) => {
                errors.push(FieldError::invalid("spec.clusterIPs", json!([requested]), format!("failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {cidr}")));
                None
            }
            Ok(address) if taken.ips.contains(&address) => {
                errors.push(FieldError::invalid("spec.clusterIPs", json!([requested]), format!("failed to allocate IP {requested}: provided IP is already allocated")));
                None
            }
            Ok(_) => Some(requested),
        },
        (None, None) => match free_ip(cidr, taken, seed) {
            Some(address) => Some(address.to_string()),
            None => {
                errors.push(FieldError::invalid("spec.clusterIPs", json!([]), format!("failed to allocate a serviceIP: range is full ({cidr})")));
                None
            }
        },
    };
    if let Some(ip) = ip {
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
    }
    // Node ports, for NodePort and LoadBalancer Services only.
    let wants_node_ports = uses_node_ports(spec);
    let previous_ports: Vec<Value> = previous.filter(|p| uses_node_ports(&p["spec"])).and_then(|p| p["spec"]["ports"].as_array().cloned()).unwrap_or_default();
    let mut in_use: HashSet<u16> = taken.node_ports.clone();
    let mut next = seed;
    for (index, port) in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten().enumerate() {
        let Some(map) = port.as_object_mut() else { continue };
        if !wants_node_ports {
            map.remove("nodePort");
            continue;
        }
        let same_port = |p: &&Value| p["port"] == map["port"] && p["protocol"] == map["protocol"];
        let kept = previous_ports.iter().find(same_port).and_then(|p| p["nodePort"].as_u64()).map(|p| p as u16);
        let requested = map.get("nodePort").and_then(Value::as_u64).map(|p| p as u16);
        let chosen = match (requested, kept) {
            (Some(requested), Some(kept)) if requested == kept => Some(kept),
            (None, Some(kept)) => Some(kept),
            (Some(requested), _) if in_use.contains(&requested) => {
                errors.push(FieldError::invalid(format!("spec.ports[{index}].nodePort"), requested, "provided port is already allocated"));
                None
            }
            (Some(requested), _) => Some(requested),
            (None, None) => {
                let span = u64::from(NODE_PORT_RANGE.end() - NODE_PORT_RANGE.start()) + 1;
                let found = (0..span).map(|step| NODE_PORT_RANGE.start() + ((next + step) % span) as u16).find(|p| !in_use.contains(p));
                next = next.wrapping_add(7919);
                if found.is_none() {
                    errors.push(FieldError::invalid(format!("spec.ports[{index}].nodePort"), json!(null), "failed to allocate a nodePort: range is full"));
                }
                found
            }
        };
        if let Some(chosen) = chosen {
            in_use.insert(chosen);
            map.insert("nodePort".into(), json!(chosen));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// A free address, probing from a seeded start so concurrent clusters spread out. The network
/// and broadcast addresses and the first address (the `kubernetes` Service's) are never given.
fn free_ip(cidr: &Cidr, taken: &Taken, seed: u64) -> Option<Ipv4Addr> {
    let usable = cidr.size() - 3;
    (0..usable)
        .map(|step| Ipv4Addr::from(cidr.base + 2 + ((seed as u32).wrapping_add(step) % usable)))
        .find(|address| !taken.ips.contains(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: Value) -> Value {
        json!({"metadata": {"name": "s", "uid": "u1"}, "spec": spec})
    }

    #[test]
    fn cidr_parsing() {
        let cidr = Cidr::parse("10.43.7.9/16").unwrap();
        assert_eq!(cidr.to_string(), "10.43.0.0/16");
        assert_eq!(cidr.first(), Ipv4Addr::new(10, 43, 0, 1));
        assert!(Cidr::parse("10.43.0.0").is_err());
        assert!(Cidr::parse("10.43.0.0/31").is_err());
        assert!(Cidr::parse("300.1.1.1/16").is_err());
    }

    #[test]
    fn allocates_unique_addresses_in_range() {
        let cidr = Cidr::parse("10.43.0.0/29").unwrap();
        let mut taken = Taken::default();
        for seed in 0..5 {
            let mut object = service(json!({"type": "ClusterIP", "ports": [{"port": 80}]}));
            assign(&mut object, None, &cidr, &taken, seed).unwrap();
            let ip: Ipv4Addr = object["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
            assert!(cidr.contains(ip) && ip != cidr.first(), "{ip}");
            assert_eq!(object["spec"]["clusterIPs"], json!([ip.to_string()]));
            assert!(taken.ips.insert(ip), "{ip} given twice");
            assert!(object["spec"]["ports"][0].get("nodePort").is_none());
        }
        let mut full = service(json!({"ports": [{"port": 80}]}));
        let errors = assign(&mut full, None, &cidr, &taken, 0).unwrap_err();
        assert!(errors[0].message.contains("range is full"), "{errors:?}");
    }

    #[test]
    fn requested_addresses_are_checked() {
        let cidr = Cidr::parse("10.43.0.0/16").unwrap();
        let taken = Taken::of([&service(json!({"clusterIP": "10.43.0.10", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}))], None);
        let mut duplicate = json!({"metadata": {"uid": "u2"}, "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 80}]}});
        assert!(assign(&mut duplicate, None, &cidr, &taken, 0).unwrap_err()[0].message.contains("already allocated"));
        let mut outside = json!({"spec": {"clusterIP": "10.0.0.10", "ports": [{"port": 80}]}});
        assert!(assign(&mut outside, None, &cidr, &taken, 0).unwrap_err()[0].message.contains("not in the valid range"));
        let mut headless = json!({"spec": {"clusterIP": "None", "ports": [{"port": 80}]}});
        assign(&mut headless, None, &cidr, &taken, 0).unwrap();
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
        let mut port_clash = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}});
        assert!(assign(&mut port_clash, None, &cidr, &taken, 0).unwrap_err()[0].message.contains("already allocated"));
    }

    #[test]
    fn updates_keep_addresses_and_node_ports() {
        let cidr = Cidr::parse("10.43.0.0/16").unwrap();
        let stored = service(json!({"type": "NodePort", "clusterIP": "10.43.1.2", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31000}]}));
        let mut update = service(json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 81, "protocol": "TCP"}]}));
        assign(&mut update, Some(&stored), &cidr, &Taken::of([&stored], Some("u1")), 3).unwrap();
        assert_eq!(update["spec"]["clusterIP"], "10.43.1.2");
        assert_eq!(update["spec"]["ports"][0]["nodePort"], 31000);
        let second = update["spec"]["ports"][1]["nodePort"].as_u64().unwrap() as u16;
        assert!(NODE_PORT_RANGE.contains(&second) && second != 31000);
        // Back to ClusterIP: node ports are released.
        let mut cluster_ip = service(json!({"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31000}]}));
        assign(&mut cluster_ip, Some(&update), &cidr, &Taken::default(), 0).unwrap();
        assert!(cluster_ip["spec"]["ports"][0].get("nodePort").is_none());
    }
}
