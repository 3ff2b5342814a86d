//! The cluster listener: where the other nodes' links connect. A node
//! authenticates with the cluster secret (client id `$node/<name>`); each
//! PUBLISH it sends is a message for this node's sessions ([`super::wire`]):
//! delivered to them (never forwarded again), kept in the retained store
//! when it is retained, and acknowledged (QoS 1) once it is in their queues.

use std::sync::Arc;

use bytes::BytesMut;
use hooks_spec::ProtocolVersion;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::wire;
use crate::codec::{decode_connect, Ack, Codec, ConnAck, Packet};
use crate::shared::Shared;

/// Accepts the other nodes' links until the task is aborted.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, secret: Arc<str>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let (shared, secret) = (Arc::clone(&shared), Arc::clone(&secret));
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, &shared, &secret).await {
                        tracing::info!(%addr, "cluster link from a node ended: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("cluster listener: accept failed: {e}");
                tokio::time::sleep(super::db::RETRY).await;
            }
        }
    }
}

async fn serve(mut stream: TcpStream, shared: &Shared, secret: &str) -> Result<(), String> {
    let max = 256 * 1024 * 1024;
    let mut inbuf = BytesMut::with_capacity(4096);
    let connect = loop {
        if let Some(c) = decode_connect(&mut inbuf, max).map_err(|e| e.to_string())? {
            break c;
        }
        let read = tokio::time::timeout(shared.config.mqtt.connect_timeout, stream.read_buf(&mut inbuf))
            .await
            .map_err(|_| "no CONNECT in time".to_string())?;
        if read.map_err(|e| e.to_string())? == 0 {
            return Err("closed before CONNECT".into());
        }
    };
    let codec = Codec::new(ProtocolVersion::V5, max);
    let mut out = BytesMut::new();
    let node = connect.client_id.strip_prefix("$node/").map(str::to_string);
    let authentic = connect.password.as_deref() == Some(secret.as_bytes());
    let Some(node) = node.filter(|_| authentic && connect.protocol == ProtocolVersion::V5) else {
        let refuse = ConnAck {
            session_present: false,
            code: 0x86,
            props: Default::default(),
        };
        let _ = codec.encode(&Packet::ConnAck(refuse), &mut out, None);
        let _ = stream.write_all(&out).await;
        return Err(format!(
            "refused `{}`: not a node of this cluster",
            connect.client_id
        ));
    };
    let ok = ConnAck {
        session_present: false,
        code: 0,
        props: Default::default(),
    };
    codec
        .encode(&Packet::ConnAck(ok), &mut out, None)
        .map_err(|e| e.to_string())?;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    out.clear();
    tracing::info!(%node, "cluster link from node up");
    loop {
        while let Some(p) = codec.decode(&mut inbuf).map_err(|e| e.to_string())? {
            match p {
                Packet::Publish(p) => {
                    let pkid = p.pkid;
                    let qos = p.qos;
                    match wire::decode(p) {
                        Some((msg, to)) => {
                            shared
                                .metrics
                                .cluster_received
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let msg = Arc::new(msg);
                            if msg.retain && shared.config.mqtt.retain_available {
                                shared.retain.apply(&msg);
                            }
                            shared.router.route_forwarded(&msg, to.plain, &to.groups);
                        }
                        // Acknowledged anyway: sent again it would fail again,
                        // and hold up the link for good.
                        None => {
                            tracing::warn!(%node, "dropped a PUBLISH from the node that is not a forwarded message")
                        }
                    }
                    if qos != hooks_spec::QoS::AtMostOnce {
                        codec
                            .encode(&Packet::PubAck(Ack::new(pkid)), &mut out, None)
                            .map_err(|e| e.to_string())?;
                    }
                }
                Packet::PingReq => {
                    codec
                        .encode(&Packet::PingResp, &mut out, None)
                        .map_err(|e| e.to_string())?;
                }
                Packet::Disconnect(_) => return Ok(()),
                other => return Err(format!("unexpected packet from node `{node}`: {other:?}")),
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            out.clear();
        }
        if stream.read_buf(&mut inbuf).await.map_err(|e| e.to_string())? == 0 {
            return Err(format!("node `{node}` closed its link"));
        }
    }
}
