//! The pod of a compute generation, as the Kubernetes provisioner creates it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use spg_core::{DatabaseName, Generation, ScaleProfile};

/// The label every compute pod of a platform carries, with the platform's name.
pub const LABEL_PLATFORM: &str = "spg.dev/platform";
/// The label naming a compute pod's database (in the form [`database_label`] gives).
pub const LABEL_DATABASE: &str = "spg.dev/database";
/// The label naming a compute pod's generation.
pub const LABEL_GENERATION: &str = "spg.dev/generation";
/// The label saying whether a pod was started as a standby (`standby`) or a writer (`writer`).
pub const LABEL_ROLE: &str = "spg.dev/role";
/// The annotation holding a compute pod's database name exactly.
pub const ANNOTATION_DATABASE: &str = "spg.dev/database";
/// The DNS name in the agents' certificate; the provisioner reaches an agent by this name at
/// its pod's IP.
pub const AGENT_TLS_NAME: &str = "spg-compute";
/// Where the agent's Secret is mounted in a compute pod: `agent.toml` (settings and keys),
/// `tls.crt`/`tls.key` (the agent API's certificate), `safekeeper-ca.pem`, `pageserver-ca.pem`.
pub const AGENT_SECRET_MOUNT: &str = "/etc/spg-compute";
/// The pod's own disk for the agent (run directory, page cache, the lazy mount): an `emptyDir`.
pub const AGENT_ROOT: &str = "/var/lib/spg-compute";

/// How the platform's compute pods are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// The namespace compute pods run in.
    pub namespace: String,
    /// The container image with `spg-compute` and PostgreSQL.
    pub image: String,
    /// `imagePullPolicy` (default: Kubernetes' own).
    pub image_pull_policy: Option<String>,
    /// The platform's name, in [`LABEL_PLATFORM`] of every compute pod: control planes sharing
    /// a state store share it.
    pub platform: String,
    /// The agent API's port in the pod.
    pub agent_port: u16,
    /// PostgreSQL's port in the pod (`0`: any free one, which the agent reports).
    pub postgres_port: u16,
    /// The Secret with the agents' settings (`agent.toml`), certificate and CAs, mounted at
    /// [`AGENT_SECRET_MOUNT`].
    pub agent_secret: String,
    /// A Secret whose keys become the agent's environment (object storage credentials:
    /// `AWS_ACCESS_KEY_ID`, ...).
    pub env_secret: Option<String>,
    /// The pods' service account.
    pub service_account: Option<String>,
    /// How long a pod may take to run its agent (scheduling, image pull, start).
    pub start_timeout: Duration,
    /// After an image pull failure, starts with that image fail at once for this long
    /// (instead of a pod per wake).
    pub pull_backoff: Duration,
    /// The grace period of a pod's deletion.
    pub stop_grace: Duration,
}

impl KubeSettings {
    /// Defaults: agent on 7443, PostgreSQL on 5432, 120 s to start, 30 s of pull backoff, 30 s
    /// of deletion grace.
    pub fn new(namespace: &str, image: &str, platform: &str, agent_secret: &str) -> Self {
        KubeSettings {
            namespace: namespace.into(),
            image: image.into(),
            image_pull_policy: None,
            platform: platform.into(),
            agent_port: 7443,
            postgres_port: 5432,
            agent_secret: agent_secret.into(),
            env_secret: None,
            service_account: None,
            start_timeout: Duration::from_secs(120),
            pull_backoff: Duration::from_secs(30),
            stop_grace: Duration::from_secs(30),
        }
    }
}

/// A database name as a label value and in pod names: `_` becomes `-`, and a trailing `-` is
/// dropped (label values end alphanumeric). Several names may map to one value; the
/// [`ANNOTATION_DATABASE`] annotation tells them apart.
pub fn database_label(db: &DatabaseName) -> String {
    db.as_str()
        .replace('_', "-")
        .trim_end_matches('-')
        .to_string()
}

/// The name of generation `g`'s pod: `spg-<database>-g<N>`.
pub fn pod_name(db: &DatabaseName, g: Generation) -> String {
    format!("spg-{}-g{}", database_label(db), g.0)
}

/// The labels selecting the platform's pods of `db`.
pub fn database_selector(settings: &KubeSettings, db: &DatabaseName) -> String {
    format!(
        "{LABEL_PLATFORM}={},{LABEL_DATABASE}={}",
        settings.platform,
        database_label(db)
    )
}

/// The pod running generation `g` of `db` with `profile`'s resources: one container running
/// `spg-compute` (agent API on the pod IP, PostgreSQL on the pod IP), `/dev/fuse` and
/// `CAP_SYS_ADMIN` for the lazy mount, an `emptyDir` as its disk, the agent Secret mounted,
/// readiness from the agent (`/readyz`: a compute runs), never restarted (a compute that ends is
/// the control plane's to replace).
pub fn pod_for(
    settings: &KubeSettings,
    db: &DatabaseName,
    g: Generation,
    profile: &ScaleProfile,
    standby: bool,
) -> Result<Pod, serde_json::Error> {
    let mut labels = BTreeMap::new();
    labels.insert("app.kubernetes.io/name", "spg-compute".to_string());
    labels.insert("app.kubernetes.io/managed-by", "spg".to_string());
    labels.insert("app.kubernetes.io/part-of", "spg".to_string());
    labels.insert(LABEL_PLATFORM, settings.platform.clone());
    labels.insert(LABEL_DATABASE, database_label(db));
    labels.insert(LABEL_GENERATION, g.0.to_string());
    labels.insert(
        LABEL_ROLE,
        if standby { "standby" } else { "writer" }.to_string(),
    );
    let mut resources = serde_json::Map::new();
    let mut quantities = serde_json::Map::new();
    if let Some(m) = profile.limits.cpu_millicores {
        quantities.insert("cpu".into(), json!(format!("{m}m")));
    }
    if let Some(mb) = profile.limits.memory_mb {
        quantities.insert("memory".into(), json!(format!("{mb}Mi")));
    }
    if !quantities.is_empty() {
        // Requests equal to limits: the Guaranteed class, as the profile promises.
        resources.insert("requests".into(), json!(quantities));
        resources.insert("limits".into(), json!(quantities));
    }
    let mut env = vec![json!({
        "name": "POD_IP",
        "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } }
    })];
    env.push(json!({ "name": "SPG_LOG", "value": "info" }));
    let env_from: Vec<serde_json::Value> = settings
        .env_secret
        .iter()
        .map(|s| json!({ "secretRef": { "name": s } }))
        .collect();
    let mut ports = vec![json!({
        "name": "agent", "containerPort": settings.agent_port, "protocol": "TCP"
    })];
    if settings.postgres_port != 0 {
        ports.push(json!({
            "name": "postgres", "containerPort": settings.postgres_port, "protocol": "TCP"
        }));
    }
    let mut spec = json!({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": settings.stop_grace.as_secs(),
        "enableServiceLinks": false,
        "containers": [{
            "name": "compute",
            "image": settings.image,
            "command": ["spg-compute"],
            "args": [
                "--config", format!("{AGENT_SECRET_MOUNT}/agent.toml"),
                "--tls-cert", format!("{AGENT_SECRET_MOUNT}/tls.crt"),
                "--tls-key", format!("{AGENT_SECRET_MOUNT}/tls.key"),
                "--safekeeper-ca", format!("{AGENT_SECRET_MOUNT}/safekeeper-ca.pem"),
                "--pageserver-ca", format!("{AGENT_SECRET_MOUNT}/pageserver-ca.pem"),
                "--root", AGENT_ROOT,
                "--listen", format!("$(POD_IP):{}", settings.agent_port),
                "--postgres-listen", "$(POD_IP)",
                "--postgres-port", settings.postgres_port.to_string(),
                "--no-cgroups",
            ],
            "env": env,
            "envFrom": env_from,
            "ports": ports,
            "resources": resources,
            // A container that fails says why in its status: the end of its log.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "readinessProbe": {
                "httpGet": { "path": "/readyz", "port": settings.agent_port, "scheme": "HTTPS" },
                "periodSeconds": 1,
                "failureThreshold": 1,
            },
            "securityContext": {
                // The lazy mount: FUSE needs the device and CAP_SYS_ADMIN to mount.
                "capabilities": { "add": ["SYS_ADMIN"] },
                "allowPrivilegeEscalation": true,
            },
            "volumeMounts": [
                { "name": "agent", "mountPath": AGENT_SECRET_MOUNT, "readOnly": true },
                { "name": "disk", "mountPath": AGENT_ROOT },
                { "name": "fuse", "mountPath": "/dev/fuse" },
            ],
        }],
        "volumes": [
            { "name": "agent", "secret": { "secretName": settings.agent_secret, "defaultMode": 0o400 } },
            { "name": "disk", "emptyDir": {} },
            { "name": "fuse", "hostPath": { "path": "/dev/fuse", "type": "CharDevice" } },
        ],
    });
    if let Some(p) = &settings.image_pull_policy {
        spec["containers"][0]["imagePullPolicy"] = json!(p);
    }
    if let Some(sa) = &settings.service_account {
        spec["serviceAccountName"] = json!(sa);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(db, g),
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": { ANNOTATION_DATABASE: db.as_str() },
        },
        "spec": spec,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::config::{default_profile, l2_profile};

    #[test]
    fn names_and_labels_fit_kubernetes() {
        let db = DatabaseName::new("shop_eu_").unwrap();
        assert_eq!(database_label(&db), "shop-eu");
        assert_eq!(pod_name(&db, Generation(12)), "spg-shop-eu-g12");
        let s = KubeSettings::new("spg", "spg:1", "prod", "spg-compute-cp");
        assert_eq!(
            database_selector(&s, &db),
            "spg.dev/platform=prod,spg.dev/database=shop-eu"
        );
    }

    #[test]
    fn the_pod_carries_the_profile_the_labels_and_the_agent() {
        let db = DatabaseName::new("shop").unwrap();
        let mut s = KubeSettings::new("spg", "spg:1", "prod", "spg-compute-cp");
        let pod = pod_for(&s, &db, Generation(3), &l2_profile(), true).unwrap();
        let v = serde_json::to_value(&pod).unwrap();
        let labels = &v["metadata"]["labels"];
        assert_eq!(labels[LABEL_PLATFORM], "prod");
        assert_eq!(labels[LABEL_DATABASE], "shop");
        assert_eq!(labels[LABEL_GENERATION], "3");
        assert_eq!(labels[LABEL_ROLE], "standby");
        assert_eq!(v["metadata"]["annotations"][ANNOTATION_DATABASE], "shop");
        let c = &v["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["cpu"], "2000m");
        assert_eq!(c["resources"]["requests"]["memory"], "4096Mi");
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.windows(2).any(|w| w == ["--listen", "$(POD_IP):7443"]));
        assert!(args.windows(2).any(|w| w == ["--postgres-port", "5432"]));
        assert_eq!(v["spec"]["restartPolicy"], "Never");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["ports"].as_array().unwrap().len(), 2);
        // Any free port: no fixed port to declare.
        s.postgres_port = 0;
        let mut bare = default_profile();
        bare.limits = Default::default();
        let v =
            serde_json::to_value(pod_for(&s, &db, Generation(4), &bare, false).unwrap()).unwrap();
        let c = &v["spec"]["containers"][0];
        assert_eq!(c["ports"].as_array().unwrap().len(), 1);
        assert!(c["resources"].get("limits").is_none());
        assert_eq!(v["metadata"]["labels"][LABEL_ROLE], "writer");
    }
}
