//! The request gate in front of rmcp: a line longer than the limit is answered with an
//! error (its id read from its first bytes) and skipped, and the server goes on.

use super::*;

/// The top-level `"id"` of a JSON-RPC message from its first bytes (the rest may be
/// missing): a number or a string, else `null`. Nested objects and strings are
/// skipped, so an `"id"` inside the params is never taken for the request's.
pub(super) fn leading_id(prefix: &[u8]) -> serde_json::Value {
    let mut depth = 0usize;
    let mut i = 0;
    // The last string seen at the top level: a key when a ':' follows it.
    let mut last_string: Option<(usize, usize)> = None;
    while i < prefix.len() {
        match prefix[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < prefix.len() && prefix[i] != b'"' {
                    i += if prefix[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 {
                    last_string = Some((start, i.min(prefix.len())));
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' if depth == 1 && last_string.is_some_and(|(a, b)| &prefix[a..b] == b"id") => {
                let mut values = serde_json::Deserializer::from_slice(&prefix[i + 1..]).into_iter();
                return match values.next() {
                    Some(Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::String(_)))) => {
                        v
                    }
                    _ => serde_json::Value::Null,
                };
            }
            b',' if depth == 1 => last_string = None,
            _ => {}
        }
        i += 1;
    }
    serde_json::Value::Null
}

/// Between the client and rmcp: lines from `input` up to `limit` bytes are passed
/// on; a longer one is discarded up to its newline and answered on `output` with an
/// Invalid Request error (the request's id when its first bytes show it), written
/// between two of rmcp's messages, never inside one. Returns rmcp's ends and the task
/// that copies rmcp's messages to `output`.
pub(super) fn gate<R, W>(
    input: R,
    output: W,
    limit: usize,
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<()>,
)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut to_rmcp, rmcp_in) = tokio::io::duplex(1 << 16);
    let (rmcp_out, from_rmcp) = tokio::io::duplex(1 << 16);
    let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut input = tokio::io::BufReader::new(input);
        let mut line: Vec<u8> = Vec::new();
        // Set while the rest of an oversized message is discarded: its id.
        let mut oversized: Option<serde_json::Value> = None;
        loop {
            let buf = match input.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(b) => b,
            };
            let (chunk, ends) = match buf.iter().position(|b| *b == b'\n') {
                Some(n) => (&buf[..=n], true),
                None => (buf, false),
            };
            let used = chunk.len();
            // The id is looked for in the first 64 KiB of an oversized message.
            const HEAD: usize = 1 << 16;
            match oversized {
                Some(_) => {}
                None if line.len() + used > limit + 1 => {
                    line.truncate(HEAD);
                    let room = HEAD - line.len();
                    line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    oversized = Some(leading_id(&line));
                    line.clear();
                }
                None => line.extend_from_slice(chunk),
            }
            input.consume(used);
            if !ends {
                continue;
            }
            if let Some(id) = oversized.take() {
                let reply = serde_json::json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "error": {
                        "code": -32600,
                        "message": format!(
                            "request larger than the limit of nixcell mcp, {limit} bytes ({} MiB); it was discarded",
                            limit >> 20
                        ),
                    },
                });
                let mut bytes = reply.to_string().into_bytes();
                bytes.push(b'\n');
                let _ = err_tx.send(bytes);
            } else if to_rmcp.write_all(&line).await.is_err() {
                break;
            }
            line.clear();
        }
        // EOF from the client: rmcp sees it too and ends the service.
        let _ = to_rmcp.shutdown().await;
    });
    let copy = tokio::spawn(async move {
        let mut output = output;
        let mut from_rmcp = tokio::io::BufReader::new(from_rmcp);
        let mut line = Vec::new();
        let mut open = true;
        while open || !err_rx.is_empty() {
            tokio::select! {
                biased;
                r = from_rmcp.read_until(b'\n', &mut line), if open => {
                    match r {
                        Ok(0) | Err(_) => open = false,
                        Ok(_) if line.ends_with(b"\n") => {
                            if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                                return;
                            }
                            line.clear();
                        }
                        Ok(_) => {}
                    }
                }
                // Only between two of rmcp's messages (a partial one is in `line`).
                Some(e) = err_rx.recv(), if line.is_empty() => {
                    if output.write_all(&e).await.is_err() || output.flush().await.is_err() {
                        return;
                    }
                }
                else => break,
            }
        }
        if !line.is_empty() {
            let _ = output.write_all(&line).await;
        }
        let _ = output.flush().await;
    });
    (rmcp_in, rmcp_out, copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_of_a_message_is_read_from_its_first_bytes_only_at_the_top() {
        let id = |s: &str| leading_id(s.as_bytes());
        assert_eq!(id(r#"{"jsonrpc":"2.0","id":7,"method":"x","params":{"#), 7);
        assert_eq!(id(r#"{"id" : "a\"b","method":"#), "a\"b");
        assert_eq!(
            id(r#"{"params":{"id":5,"s":"\"id\":6"},"id":9,"#),
            serde_json::json!(9)
        );
        assert_eq!(
            id(r#"{"method":"x","params":{"id":5,"#),
            serde_json::Value::Null
        );
        assert_eq!(id(r#"{"id":{"x":1},"#), serde_json::Value::Null);
        assert_eq!(id("garbage"), serde_json::Value::Null);
    }

    #[tokio::test]
    async fn an_oversized_line_is_answered_between_messages_and_the_rest_goes_on() {
        let (client, server_in) = tokio::io::duplex(1 << 20);
        let (server_out, mut observed) = tokio::io::duplex(1 << 20);
        let (mut rmcp_in, mut rmcp_out, copy) = gate(server_in, server_out, 100);
        let (_, mut client_w) = tokio::io::split(client);
        let big = format!("{{\"id\":3,\"x\":\"{}\"}}\n", "a".repeat(500));
        client_w.write_all(b"{\"id\":1}\n").await.unwrap();
        client_w.write_all(big.as_bytes()).await.unwrap();
        client_w.write_all(b"{\"id\":4}\n").await.unwrap();
        drop(client_w);
        let mut passed = String::new();
        rmcp_in.read_to_string(&mut passed).await.unwrap();
        assert_eq!(passed, "{\"id\":1}\n{\"id\":4}\n");
        rmcp_out
            .write_all(b"{\"id\":1,\"result\":{}}\n")
            .await
            .unwrap();
        drop(rmcp_out);
        copy.await.unwrap();
        let mut out = String::new();
        observed.read_to_string(&mut out).await.unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        let err = lines
            .iter()
            .find(|v| v["id"] == 3)
            .expect("an error for id 3");
        assert_eq!(err["error"]["code"], -32600);
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("100 bytes")
        );
        assert!(
            lines
                .iter()
                .any(|v| v["id"] == 1 && v["result"].is_object())
        );
    }
}
