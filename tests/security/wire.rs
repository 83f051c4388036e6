//! Reading an HTTP/1.1 response off a raw connection, for the tests that write their
//! requests byte by byte.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads one response: its status, its head in lowercase and its body (as long as its
/// `content-length` says). `None` when the connection closed first.
pub async fn read_response(stream: &mut TcpStream) -> Option<(u16, String, Vec<u8>)> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let status: u16 = head.get(9..12)?.parse().ok()?;
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return Some((status, head, received[end + 4..end + 4 + length].to_vec()));
            }
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

/// [`read_response`]'s status and body, the body as text.
pub async fn read_text_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let (status, _, body) = read_response(stream).await?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}
