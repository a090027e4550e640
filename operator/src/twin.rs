//! A twin of the Kubernetes API server, for tests (feature `twin`): no
//! API server can run on the test machines, so kube's own client is
//! pointed at this in-memory service instead of at a socket. It keeps
//! objects as JSON and answers the calls the operator makes — get, list
//! with a label selector, server-side apply, merge patches (also of
//! `/status`), delete — with Kubernetes' shapes and status codes. It is
//! an approximation, and says where: a StatefulSet's immutable fields
//! are refused (422) as Kubernetes does; apply replaces the applied fields
//! rather than tracking field managers; deleting a pod only marks it
//! terminating (the test's kubelet twin finishes it, as a kubelet would);
//! an object with finalizers is marked deleted until they are gone. Every
//! write is logged, so a test can check what the operator did and in
//! which order.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

/// Objects by (resource plural, namespace, name).
type Key = (String, String, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    next: u64,
    log: Vec<String>,
}

/// The twin's store, shared by its client and the test.
#[derive(Clone, Default)]
pub struct Twin {
    state: Arc<Mutex<State>>,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": reason, "message": message, "code": code.as_u16(),
    });
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a response")
}

/// RFC 7386.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn matches(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

/// `/api/v1/namespaces/NS/PLURAL[/NAME[/status]]` or
/// `/apis/GROUP/VERSION/namespaces/...`: (plural, ns, name, status?).
fn parse(path: &str) -> Option<(String, String, Option<String>, bool)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = match *parts.first()? {
        "api" if parts.len() >= 2 => &parts[2..],
        "apis" if parts.len() >= 3 => &parts[3..],
        _ => return None,
    };
    match rest {
        ["namespaces", ns, plural] => Some((plural.to_string(), ns.to_string(), None, false)),
        ["namespaces", ns, plural, name] => Some((
            plural.to_string(),
            ns.to_string(),
            Some(name.to_string()),
            false,
        )),
        ["namespaces", ns, plural, name, "status"] => Some((
            plural.to_string(),
            ns.to_string(),
            Some(name.to_string()),
            true,
        )),
        _ => None,
    }
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| url_decode(v))
    })
}

fn url_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Twin {
    pub fn new() -> Twin {
        Twin::default()
    }

    /// A kube client whose requests this twin answers.
    pub fn client(&self) -> kube::Client {
        let twin = self.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let twin = twin.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Ok::<_, Infallible>(
                    twin.handle(
                        &parts.method,
                        &parts.uri,
                        parts
                            .headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                        &bytes,
                    ),
                )
            }
        });
        kube::Client::new(svc, "default")
    }

    fn handle(
        &self,
        method: &Method,
        uri: &http::Uri,
        content_type: &str,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let Some((plural, ns, name, sub_status)) = parse(uri.path()) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no route {}", uri.path()),
            );
        };
        let mut st = self.state.lock().unwrap();
        match (method.clone(), name) {
            (Method::GET, None) => {
                let selector = query(uri, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((p, n, _), o)| *p == plural && *n == ns && matches(o, &selector))
                    .map(|(_, o)| o.clone())
                    .collect();
                let rv = st.next.to_string();
                respond(
                    StatusCode::OK,
                    &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            (Method::GET, Some(name)) => {
                match st.objects.get(&(plural.clone(), ns, name.clone())) {
                    Some(o) => respond(StatusCode::OK, o),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{plural} \"{name}\" not found"),
                    ),
                }
            }
            (Method::PATCH, Some(name)) => {
                let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the twin takes JSON bodies".into(),
                    );
                };
                let key = (plural.clone(), ns.clone(), name.clone());
                st.next += 1;
                let rv = st.next;
                let existing = st.objects.get(&key).cloned();
                let obj = if content_type.starts_with("application/apply-patch") {
                    match existing {
                        None => {
                            let mut o = patch.clone();
                            o["metadata"]["uid"] = json!(format!("uid-{rv}"));
                            o["metadata"]["generation"] = json!(1);
                            o["metadata"]["creationTimestamp"] = json!("2026-12-06T00:00:00Z");
                            st.log.push(format!("create {plural}/{name}"));
                            o
                        }
                        Some(mut o) => {
                            let before = o.clone();
                            // Fields Kubernetes refuses to change.
                            if plural == "statefulsets" {
                                for f in [
                                    "selector",
                                    "serviceName",
                                    "volumeClaimTemplates",
                                    "podManagementPolicy",
                                ] {
                                    if !patch["spec"][f].is_null()
                                        && patch["spec"][f] != o["spec"][f]
                                    {
                                        return status(
                                            StatusCode::UNPROCESSABLE_ENTITY,
                                            "Invalid",
                                            format!("StatefulSet.apps \"{name}\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden ({f})"),
                                        );
                                    }
                                }
                            }
                            for (k, v) in patch.as_object().into_iter().flatten() {
                                if k == "metadata" {
                                    for (mk, mv) in v.as_object().into_iter().flatten() {
                                        o["metadata"][mk] = mv.clone();
                                    }
                                } else if k != "status" {
                                    o[k] = v.clone();
                                }
                            }
                            if o["spec"] != before["spec"] {
                                let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
                                o["metadata"]["generation"] = json!(g + 1);
                                st.log.push(format!(
                                    "update {plural}/{name}{}",
                                    describe(&before, &o)
                                ));
                            }
                            o
                        }
                    }
                } else {
                    let Some(mut o) = existing else {
                        return status(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            format!("{plural} \"{name}\" not found"),
                        );
                    };
                    if sub_status {
                        merge(&mut o["status"], &patch["status"]);
                    } else {
                        let before = o.clone();
                        merge(&mut o, &patch);
                        if o["spec"] != before["spec"] {
                            let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
                            o["metadata"]["generation"] = json!(g + 1);
                        }
                    }
                    o
                };
                let mut obj = obj;
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                let gone = obj["metadata"]["deletionTimestamp"].is_string()
                    && obj["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(|f| f.is_empty());
                if gone {
                    st.objects.remove(&key);
                    st.log.push(format!("delete {plural}/{name}"));
                } else {
                    st.objects.insert(key, obj.clone());
                }
                respond(StatusCode::OK, &obj)
            }
            (Method::DELETE, Some(name)) => {
                let key = (plural.clone(), ns, name.clone());
                let Some(mut o) = st.objects.get(&key).cloned() else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{plural} \"{name}\" not found"),
                    );
                };
                st.log.push(format!("delete {plural}/{name}"));
                let has_finalizers = o["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
                if plural == "pods" || has_finalizers {
                    o["metadata"]["deletionTimestamp"] = json!("2026-12-06T00:00:00Z");
                    st.objects.insert(key, o.clone());
                    respond(StatusCode::OK, &o)
                } else {
                    st.objects.remove(&key);
                    respond(
                        StatusCode::OK,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                    )
                }
            }
            (m, _) => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("the twin does not serve {m} here"),
            ),
        }
    }

    /// The object, if there.
    pub fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&(plural.into(), ns.into(), name.into()))
            .cloned()
    }

    /// Objects of `plural` in `ns`.
    pub fn list(&self, plural: &str, ns: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|((p, n, _), _)| p == plural && n == ns)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Stores `obj` as is (what a kubelet or a user would write).
    pub fn put(&self, plural: &str, ns: &str, obj: Value) {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut st = self.state.lock().unwrap();
        st.next += 1;
        st.objects.insert((plural.into(), ns.into(), name), obj);
    }

    /// Removes an object for good (a kubelet finishing a pod's deletion).
    pub fn remove(&self, plural: &str, ns: &str, name: &str) {
        self.state
            .lock()
            .unwrap()
            .objects
            .remove(&(plural.into(), ns.into(), name.into()));
    }

    /// Every write so far, in order (`create statefulsets/x`, `update
    /// statefulsets/x replicas 4 -> 2`, `delete pods/y`).
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

fn describe(before: &Value, after: &Value) -> String {
    let (a, b) = (&before["spec"]["replicas"], &after["spec"]["replicas"]);
    if a != b {
        format!(" replicas {a} -> {b}")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

    #[tokio::test]
    async fn kubes_client_gets_lists_applies_patches_and_deletes_through_the_twin() {
        let twin = Twin::new();
        let client = twin.client();
        let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "ns");
        assert!(sts.get_opt("a").await.unwrap().is_none());
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "a", "namespace": "ns", "labels": {"x": "1"}},
            "spec": {"replicas": 2, "serviceName": "a", "selector": {"matchLabels": {"x": "1"}},
                     "template": {"metadata": {"labels": {"x": "1"}}, "spec": {"containers": []}}},
        });
        let pp = PatchParams::apply("t").force();
        sts.patch("a", &pp, &Patch::Apply(&obj)).await.unwrap();
        let mut obj2 = obj.clone();
        obj2["spec"]["replicas"] = json!(3);
        let got = sts.patch("a", &pp, &Patch::Apply(&obj2)).await.unwrap();
        assert_eq!(got.spec.unwrap().replicas, Some(3));
        assert_eq!(got.metadata.generation, Some(2));
        assert_eq!(
            sts.list(&ListParams::default().labels("x=1"))
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        assert_eq!(
            sts.list(&ListParams::default().labels("x=2"))
                .await
                .unwrap()
                .items
                .len(),
            0
        );
        sts.patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 3}})),
        )
        .await
        .unwrap();
        assert_eq!(
            twin.get("statefulsets", "ns", "a").unwrap()["status"]["replicas"],
            3
        );
        let mut moved = obj2.clone();
        moved["spec"]["serviceName"] = json!("b");
        let e = sts
            .patch("a", &pp, &Patch::Apply(&moved))
            .await
            .unwrap_err();
        assert!(matches!(e, kube::Error::Api(ref s) if s.code == 422), "{e}");
        sts.delete("a", &DeleteParams::default()).await.unwrap();
        assert!(sts.get_opt("a").await.unwrap().is_none());
        // A pod is only marked.
        twin.put("pods", "ns", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}));
        let pods: Api<Pod> = Api::namespaced(client, "ns");
        pods.delete("p", &DeleteParams::default()).await.unwrap();
        assert!(pods
            .get("p")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some());
        assert_eq!(
            twin.log(),
            vec![
                "create statefulsets/a",
                "update statefulsets/a replicas 2 -> 3",
                "delete statefulsets/a",
                "delete pods/p"
            ]
        );
    }
}
