//! Pod networks: each pod with containers gets a network namespace (`/run/netns/shoal-…`) joined
//! by a veth pair to the node's bridge, with an address from the node's pod range; that address
//! is the pod's `podIP`. The bridge holds the range's first address as the pods' gateway, and
//! traffic from pods to anywhere else is masqueraded as the node's (egress). Addresses are
//! leased in files under the data dir, so a restarted agent keeps them.
//!
//! Links, addresses and routes are set with iproute2's `ip` and the NAT rules with `iptables`,
//! both run as commands: the operations are few, happen once per pod, and are the same ones an
//! operator would type to inspect or repair a node.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{Error, Result};

/// A node's pod range: an IPv4 network of prefix length 16 to 28.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodRange {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl PodRange {
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = || Error::Network(format!("pod range {text:?} is not an IPv4 network such as 10.88.1.0/24"));
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if !(16..=28).contains(&prefix) {
            return Err(Error::Network(format!("pod range {text}: the prefix must be between /16 and /28")));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(PodRange { network: Ipv4Addr::from(u32::from(address) & mask), prefix })
    }

    /// A /24 in 10.88.0.0/16 picked by the node's name, for nodes not given a range.
    pub fn for_node(node_name: &str) -> Self {
        let digest = shoal_oci::Digest::of(node_name.as_bytes());
        let third = u8::from_str_radix(&digest.hex()[..2], 16).unwrap_or(0);
        PodRange { network: Ipv4Addr::new(10, 88, third, 0), prefix: 24 }
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// The gateway: the range's first host address, held by the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Pod addresses: every host address after the gateway.
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let base = u32::from(self.network);
        (2..self.size() - 1).map(move |offset| Ipv4Addr::from(base + offset))
    }
}

impl std::fmt::Display for PodRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A pod's network: its namespace and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    /// The namespace's name under `/run/netns`.
    pub namespace: String,
    pub address: Ipv4Addr,
}

impl PodNetwork {
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.namespace)
    }

    /// A listener on `0.0.0.0:port` inside the pod's network namespace, so that the pod's
    /// containers reach the node (serving the pod's Wasm components) at `localhost:port`. The
    /// socket is made on a short-lived thread that joins the namespace; a socket keeps the
    /// namespace it was made in.
    pub fn listen(&self, port: u16) -> Result<std::net::TcpListener> {
        let path = self.path();
        let thread = std::thread::spawn(move || -> Result<std::net::TcpListener> {
            let namespace = std::fs::File::open(&path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| Error::Network(format!("joining {}: {e}", path.display())))?;
            let listener = std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| Error::Network(format!("listening on port {port} in the pod: {e}")))?;
            listener.set_nonblocking(true).map_err(|e| Error::Network(e.to_string()))?;
            Ok(listener)
        });
        thread.join().map_err(|_| Error::Network("the thread joining the pod's namespace panicked".into()))?
    }
}

/// The node's bridge and its address leases.
pub struct Network {
    pub range: PodRange,
    pub bridge: String,
    leases: PathBuf,
    allocating: Mutex<()>,
}

fn run<S: AsRef<str>>(program: &str, args: &[S]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let output = std::process::Command::new(program).args(&args).output().map_err(|e| Error::Network(format!("running {program}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Network(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim())))
}

fn succeeds<S: AsRef<str>>(program: &str, args: &[S]) -> bool {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    std::process::Command::new(program).args(&args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

/// A short stable name (interface names are at most 15 bytes).
fn short(prefix: &str, text: &str) -> String {
    format!("{prefix}{}", &shoal_oci::Digest::of(text.as_bytes()).hex()[..10])
}

impl Network {
    /// Sets up the bridge for `range` (idempotent) and the leases directory.
    pub fn start(data_dir: &Path, range: PodRange) -> Result<Self> {
        // Named by the range: nodes sharing a machine (tests, several agents) get a bridge each.
        let bridge = short("shb", &range.to_string());
        let leases = data_dir.join("network").join("leases");
        std::fs::create_dir_all(&leases).map_err(|e| Error::Io { path: leases.clone(), source: e })?;
        if !succeeds("ip", &["link", "show", &bridge]) {
            run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        }
        let gateway = format!("{}/{}", range.gateway(), range.prefix);
        if !succeeds("sh", &["-c", &format!("ip -4 addr show dev {bridge} | grep -q 'inet {gateway} '")]) {
            run("ip", &["addr", "add", &gateway, "dev", &bridge])?;
        }
        run("ip", &["link", "set", &bridge, "up"])?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| Error::Network(format!("enabling IP forwarding: {e}")))?;
        let cidr = range.to_string();
        let rules: [&[&str]; 3] = [
            &["-t", "nat", "POSTROUTING", "-s", &cidr, "!", "-o", &bridge, "-j", "MASQUERADE"],
            &["-t", "filter", "FORWARD", "-i", &bridge, "-j", "ACCEPT"],
            &["-t", "filter", "FORWARD", "-o", &bridge, "-j", "ACCEPT"],
        ];
        for rule in rules {
            let (table, rest) = (&rule[..2], &rule[2..]);
            let chain = rest[0];
            let spec = &rest[1..];
            let check: Vec<&str> = table.iter().copied().chain(["-C", chain]).chain(spec.iter().copied()).collect();
            if !succeeds("iptables", &check) {
                let insert: Vec<&str> = table.iter().copied().chain(["-I", chain]).chain(spec.iter().copied()).collect();
                run("iptables", &insert)?;
            }
        }
        Ok(Network { range, bridge, leases, allocating: Mutex::new(()) })
    }

    /// The network of pod `uid`, created if it does not exist yet (a restarted agent finds the
    /// one it made before). With `redirect` (a cluster IP and port), the pod's connections to it
    /// go to the gateway's same port (see [`Self::redirect_to_gateway`]).
    pub fn attach(&self, uid: &str, redirect: Option<(Ipv4Addr, u16)>) -> Result<PodNetwork> {
        let namespace = short("shoal-", uid);
        let address = self.lease(uid)?;
        let network = PodNetwork { namespace: namespace.clone(), address };
        if network.path().exists() && succeeds("ip", &["-n", &namespace, "-4", "addr", "show", "dev", "eth0"]) {
            if let Some((destination, port)) = redirect {
                self.redirect_to_gateway(&network, destination, port)?;
            }
            return Ok(network);
        }
        let _ = run("ip", &["netns", "del", &namespace]);
        run("ip", &["netns", "add", &namespace])?;
        let host_side = short("shv", uid);
        let setup = || -> Result<()> {
            run("ip", &["link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns", &namespace])?;
            run("ip", &["link", "set", &host_side, "master", &self.bridge, "up"])?;
            run("ip", &["-n", &namespace, "addr", "add", &format!("{address}/{}", self.range.prefix), "dev", "eth0"])?;
            run("ip", &["-n", &namespace, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &namespace, "link", "set", "lo", "up"])?;
            run("ip", &["-n", &namespace, "route", "add", "default", "via", &self.range.gateway().to_string()])?;
            // A new namespace has no rules yet: no check first (each command is a process).
            match redirect {
                Some((destination, port)) => run("ip", &self.redirect_rule(&network, destination, port, "-A")),
                None => Ok(()),
            }
        };
        if let Err(error) = setup() {
            let _ = run("ip", &["netns", "del", &namespace]);
            let _ = run("ip", &["link", "del", &host_side]);
            return Err(error);
        }
        Ok(network)
    }

    /// Sends the pod's TCP connections to `destination:port` (a cluster IP) to the same port
    /// of the gateway, where the node's listeners are: a NAT rule inside the pod's namespace,
    /// added once.
    pub fn redirect_to_gateway(&self, network: &PodNetwork, destination: Ipv4Addr, port: u16) -> Result<()> {
        if succeeds("ip", &self.redirect_rule(network, destination, port, "-C")) {
            return Ok(());
        }
        run("ip", &self.redirect_rule(network, destination, port, "-A"))
    }

    /// `ip` arguments that check (`-C`) or add (`-A`) the rule of [`Self::redirect_to_gateway`].
    fn redirect_rule(&self, network: &PodNetwork, destination: Ipv4Addr, port: u16, action: &str) -> Vec<String> {
        let words = ["netns", "exec", &network.namespace, "iptables", "-w", "-t", "nat", action, "OUTPUT", "-d", &format!("{destination}/32"), "-p", "tcp", "--dport", &port.to_string(), "-j", "DNAT", "--to-destination", &format!("{}:{port}", self.range.gateway())];
        words.iter().map(|w| w.to_string()).collect()
    }

    /// Removes pod `uid`'s namespace (and with it the veth pair) and frees its address.
    pub fn detach(&self, uid: &str) {
        let namespace = short("shoal-", uid);
        if Path::new("/run/netns").join(&namespace).exists()
            && let Err(error) = run("ip", &["netns", "del", &namespace])
        {
            tracing::warn!(%error, "removing a pod's network namespace");
        }
        let _ = run("ip", &["link", "del", &short("shv", uid)]);
        let _allocating = self.allocating.lock().unwrap_or_else(|p| p.into_inner());
        for entry in std::fs::read_dir(&self.leases).into_iter().flatten().flatten() {
            if std::fs::read_to_string(entry.path()).is_ok_and(|owner| owner == uid) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The pods that hold addresses here (to clean up after pods deleted while the agent was down).
    pub fn attached(&self) -> Vec<String> {
        std::fs::read_dir(&self.leases).into_iter().flatten().flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect()
    }

    fn lease(&self, uid: &str) -> Result<Ipv4Addr> {
        let _allocating = self.allocating.lock().unwrap_or_else(|p| p.into_inner());
        let mut free = None;
        for address in self.range.hosts() {
            let path = self.leases.join(address.to_string());
            match std::fs::read_to_string(&path) {
                Ok(owner) if owner == uid => return Ok(address),
                Ok(_) => {}
                Err(_) if free.is_none() => free = Some((address, path)),
                Err(_) => {}
            }
        }
        let (address, path) = free.ok_or_else(|| Error::Network(format!("the pod range {} is full", self.range)))?;
        std::fs::write(&path, uid).map_err(|e| Error::Io { path, source: e })?;
        Ok(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_normalise() {
        let range = PodRange::parse("10.88.7.9/24").expect("valid");
        assert_eq!(range.network, Ipv4Addr::new(10, 88, 7, 0));
        assert_eq!(range.gateway(), Ipv4Addr::new(10, 88, 7, 1));
        assert_eq!(range.hosts().next(), Some(Ipv4Addr::new(10, 88, 7, 2)));
        assert_eq!(range.hosts().last(), Some(Ipv4Addr::new(10, 88, 7, 254)));
        assert!(PodRange::parse("10.88.0.0/8").is_err());
        assert!(PodRange::parse("nonsense").is_err());
    }

    #[test]
    fn node_ranges_are_stable_per_name() {
        assert_eq!(PodRange::for_node("a"), PodRange::for_node("a"));
        assert_eq!(PodRange::for_node("a").prefix, 24);
        // Interface names (the bridge, the host side of a veth) fit in 15 bytes.
        assert!(short("shv", "some-long-uid-value").len() <= 15);
        assert!(short("shb", "a-very-long-node-name-indeed").len() <= 15);
    }

    #[test]
    fn leases_are_per_pod_and_reused() {
        let directory = tempfile::tempdir().expect("a temp dir");
        let network = Network { range: PodRange::parse("10.9.0.0/28").expect("valid"), bridge: "x".into(), leases: directory.path().to_owned(), allocating: Mutex::new(()) };
        let a = network.lease("a").expect("an address");
        let b = network.lease("b").expect("an address");
        assert_ne!(a, b);
        assert_eq!(network.lease("a").expect("the same"), a);
        // A /28 has 13 pod addresses.
        for pod in 0..11 {
            network.lease(&format!("p{pod}")).expect("room");
        }
        assert!(network.lease("one-too-many").is_err());
    }
}
