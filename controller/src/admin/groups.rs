//! The admin API's group listing: Kafka's ListGroups (v5, with the group
//! type of KIP-848) asked of every registered broker over its Kafka
//! listener, merged into one list with each group's coordinator.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use floe_kafka::tls::InternalTls;
use floe_meta::schema::BrokerRecord;
use floe_meta::{keys, MetadataStore};
use floe_protocol::kafka_protocol::messages::{
    ApiKey, ListGroupsRequest, ListGroupsResponse, RequestHeader, ResponseHeader,
};
use floe_protocol::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Status;

use super::unavailable;
use floe_rpc::admin as pb;

const VERSION: i16 = 5;

/// One ListGroups round trip to a broker's Kafka listener (over mutual TLS
/// with the cluster's identity when there is one).
async fn list_one(
    host: &str,
    port: i32,
    tls: Option<&InternalTls>,
) -> anyhow::Result<ListGroupsResponse> {
    let api = ApiKey::ListGroups;
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("floe-admin")))
        .encode(&mut buf, api.request_header_version(VERSION))?;
    ListGroupsRequest::default().encode(&mut buf, VERSION)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host, port as u16)).await?;
        let mut s: Box<dyn Stream> = match tls {
            Some(tls) => Box::new(tls.connect(tcp, host).await?),
            None => Box::new(tcp),
        };
        s.write_all(&buf).await?;
        let n = s.read_i32().await?;
        if !(0..=64 << 20).contains(&n) {
            anyhow::bail!("answer of {n} bytes");
        }
        let mut body = vec![0u8; n as usize];
        s.read_exact(&mut body).await?;
        anyhow::Ok(bytes::Bytes::from(body))
    };
    let mut body = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s"))??;
    let h = ResponseHeader::decode(&mut body, api.response_header_version(VERSION))?;
    anyhow::ensure!(h.correlation_id == 1, "answer to another request");
    let r = ListGroupsResponse::decode(&mut body, VERSION)?;
    anyhow::ensure!(!body.has_remaining(), "trailing bytes");
    Ok(r)
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for S {}

pub async fn list(
    meta: &dyn MetadataStore,
    tls: Option<&InternalTls>,
) -> Result<pb::GroupList, Status> {
    let (kvs, _) = meta
        .range(&keys::brokers_prefix())
        .await
        .map_err(unavailable)?;
    let brokers: Vec<BrokerRecord> = kvs
        .iter()
        .filter(|kv| keys::parse_broker(&kv.key).is_some())
        .filter_map(|kv| BrokerRecord::decode(kv.value.clone()).ok())
        .collect();
    let answers = futures::future::join_all(
        brokers
            .iter()
            .map(|b| async move { (b.broker_id, list_one(&b.host, b.port, tls).await) }),
    )
    .await;
    let mut out = pb::GroupList::default();
    for (broker, answer) in answers {
        match answer {
            Ok(r) if r.error_code == 0 => {
                out.groups
                    .extend(r.groups.into_iter().map(|g| pb::GroupSummary {
                        name: g.group_id.0.to_string(),
                        group_type: g.group_type.to_string(),
                        protocol_type: g.protocol_type.to_string(),
                        state: g.group_state.to_string(),
                        coordinator: broker,
                    }))
            }
            Ok(r) => {
                tracing::warn!(broker, error_code = r.error_code, "ListGroups failed");
                out.unreachable.push(broker);
            }
            Err(e) => {
                tracing::warn!(broker, error = %e, "ListGroups: the broker did not answer");
                out.unreachable.push(broker);
            }
        }
    }
    out.groups.sort_by(|a, b| a.name.cmp(&b.name));
    out.unreachable.sort();
    Ok(out)
}
