//! Checks of a `FloeClusterSpec` before anything is applied: a bad spec
//! gets a Degraded condition naming the field and what to fix, and
//! changes nothing in the cluster.

use crate::crd::FloeClusterSpec;

/// One thing wrong with a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The field, as a path in the resource (`spec.storage.writeQuorum`).
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

const SCHEMES: [&str; 3] = ["s3://", "file://", "memory://"];

/// Everything wrong with `spec` (empty: it may be applied).
pub fn validate(spec: &FloeClusterSpec) -> Vec<Invalid> {
    let mut out = Vec::new();
    let mut bad = |field: &str, message: String| {
        out.push(Invalid {
            field: field.into(),
            message,
        })
    };
    if spec.image.trim().is_empty() {
        bad("spec.image", "must name the Floe image".into());
    }
    if spec.controllers.replicas < 1 {
        bad(
            "spec.controllers.replicas",
            format!("must be at least 1, is {}", spec.controllers.replicas),
        );
    }
    if spec.proxies.replicas < 1 {
        bad(
            "spec.proxies.replicas",
            format!(
                "must be at least 1 (clients reach Floe through proxies), is {}",
                spec.proxies.replicas
            ),
        );
    }
    if !(1..=65535).contains(&spec.proxies.port) {
        bad(
            "spec.proxies.port",
            format!("must be a port number, is {}", spec.proxies.port),
        );
    }
    if let Some(t) = &spec.proxies.service_type {
        if !["ClusterIP", "NodePort", "LoadBalancer"].contains(&t.as_str()) {
            bad(
                "spec.proxies.serviceType",
                format!("must be ClusterIP, NodePort or LoadBalancer, is {t:?}"),
            );
        }
    }
    match &spec.brokers.autoscaling {
        None if spec.brokers.replicas < 1 => bad(
            "spec.brokers.replicas",
            format!("must be at least 1, is {}", spec.brokers.replicas),
        ),
        None => {}
        Some(a) => {
            if a.min_brokers < 1 {
                bad(
                    "spec.brokers.autoscaling.minBrokers",
                    format!("must be at least 1, is {}", a.min_brokers),
                );
            }
            if a.max_brokers < a.min_brokers {
                bad(
                    "spec.brokers.autoscaling.maxBrokers",
                    format!(
                        "must be at least minBrokers ({}), is {}",
                        a.min_brokers, a.max_brokers
                    ),
                );
            }
            if a.target_bytes_in_per_broker == 0 {
                bad(
                    "spec.brokers.autoscaling.targetBytesInPerBroker",
                    "must be more than 0".into(),
                );
            }
        }
    }
    if matches!(spec.brokers.termination_grace_period_seconds, Some(s) if s < 10) {
        bad(
            "spec.brokers.terminationGracePeriodSeconds",
            "must be at least 10 (a broker releases its partitions in that time)".into(),
        );
    }
    match (&spec.etcd.managed, spec.etcd.endpoints.is_empty()) {
        (None, true) => bad(
            "spec.etcd",
            "set spec.etcd.endpoints (an external etcd) or spec.etcd.managed".into(),
        ),
        (Some(_), false) => bad(
            "spec.etcd",
            "set either spec.etcd.endpoints or spec.etcd.managed, not both".into(),
        ),
        (Some(m), true) if ![1, 3, 5].contains(&m.replicas) => bad(
            "spec.etcd.managed.replicas",
            format!("must be 1, 3 or 5, is {}", m.replicas),
        ),
        _ => {}
    }
    for (i, e) in spec.etcd.endpoints.iter().enumerate() {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            bad(
                &format!("spec.etcd.endpoints[{i}]"),
                format!("must be an http:// or https:// URL, is {e:?}"),
            );
        }
    }
    let s = &spec.storage;
    if s.targets.is_empty() {
        bad(
            "spec.storage.targets",
            "must list at least one storage target".into(),
        );
    }
    let mut ids = std::collections::BTreeSet::new();
    for (i, t) in s.targets.iter().enumerate() {
        if !SCHEMES.iter().any(|p| t.url.starts_with(p)) {
            let scheme = t.url.split("://").next().unwrap_or(&t.url);
            bad(
                &format!("spec.storage.targets[{i}].url"),
                format!("unknown storage scheme {scheme:?}: use s3://, file:// or memory://"),
            );
        }
        let id_ok = !t.id.is_empty()
            && t.id.len() <= 64
            && t.id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !id_ok {
            bad(
                &format!("spec.storage.targets[{i}].id"),
                format!("must be 1-64 letters, digits, '_' or '-', is {:?}", t.id),
            );
        } else if !ids.insert(t.id.as_str()) {
            bad(
                &format!("spec.storage.targets[{i}].id"),
                format!("{:?} is used twice", t.id),
            );
        }
        if let Some(z) = &t.zone {
            if z.is_empty()
                || !z
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                bad(
                    &format!("spec.storage.targets[{i}].zone"),
                    format!("must be letters, digits, '.', '_' or '-', is {z:?}"),
                );
            }
        }
    }
    if s.replicas < 1 {
        bad("spec.storage.replicas", "must be at least 1".into());
    }
    if s.write_quorum < 1 {
        bad("spec.storage.writeQuorum", "must be at least 1".into());
    }
    if s.write_quorum > s.replicas {
        bad(
            "spec.storage.writeQuorum",
            format!(
                "W ({}) must not exceed R, spec.storage.replicas ({})",
                s.write_quorum, s.replicas
            ),
        );
    }
    if s.replicas as usize > s.targets.len() {
        bad(
            "spec.storage.replicas",
            format!(
                "R ({}) needs at least as many targets, spec.storage.targets has {}",
                s.replicas,
                s.targets.len()
            ),
        );
    }
    if spec.admin.token_secret.is_empty() {
        bad(
            "spec.admin.tokenSecret",
            "must name the Secret holding the admin token (key `token`)".into(),
        );
    }
    if matches!(spec.lease_ttl_ms, Some(t) if t < 1000) {
        bad("spec.leaseTtlMs", "must be at least 1000".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::spec;

    fn fields(spec: &FloeClusterSpec) -> Vec<String> {
        validate(spec).into_iter().map(|i| i.field).collect()
    }

    #[test]
    fn a_good_spec_passes() {
        assert_eq!(validate(&spec()), vec![]);
    }

    #[test]
    fn w_above_r_names_the_write_quorum() {
        let mut s = spec();
        s.storage.write_quorum = 3;
        let v = validate(&s);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].field, "spec.storage.writeQuorum");
        assert_eq!(
            v[0].message,
            "W (3) must not exceed R, spec.storage.replicas (2)"
        );
    }

    #[test]
    fn zero_proxies_and_an_unknown_scheme_are_named() {
        let mut s = spec();
        s.proxies.replicas = 0;
        s.storage.targets[1].url = "gopher://bucket".into();
        assert_eq!(
            fields(&s),
            vec!["spec.proxies.replicas", "spec.storage.targets[1].url"]
        );
        assert!(validate(&s)[1].message.contains("\"gopher\""));
    }

    #[test]
    fn etcd_is_external_or_managed_with_an_odd_member_count() {
        let mut s = spec();
        s.etcd.endpoints.clear();
        assert_eq!(fields(&s), vec!["spec.etcd"]);
        s.etcd.managed = Some(crate::crd::ManagedEtcd {
            replicas: 2,
            image: None,
            storage_size: None,
            storage_class_name: None,
            resources: None,
        });
        assert_eq!(fields(&s), vec!["spec.etcd.managed.replicas"]);
        s.etcd.managed.as_mut().unwrap().replicas = 3;
        assert_eq!(fields(&s), Vec::<String>::new());
        s.etcd.endpoints = vec!["http://etcd:2379".into()];
        assert_eq!(fields(&s), vec!["spec.etcd"]);
    }

    #[test]
    fn r_above_the_targets_duplicate_ids_and_autoscaling_bounds() {
        let mut s = spec();
        s.storage.replicas = 4;
        s.storage.write_quorum = 2;
        s.storage.targets[2].id = "t0".into();
        s.brokers.autoscaling = Some(crate::crd::Autoscaling {
            min_brokers: 3,
            max_brokers: 2,
            target_bytes_in_per_broker: 1,
            cooldown_seconds: None,
        });
        assert_eq!(
            fields(&s),
            vec![
                "spec.brokers.autoscaling.maxBrokers",
                "spec.storage.targets[2].id",
                "spec.storage.replicas",
            ]
        );
    }
}
