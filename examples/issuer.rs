//! A minimal issuer: asks a running keyturn for an access token.
//!
//! ```sh
//! KEYTURN_TOKEN=$(cat login.token) cargo run --example issuer -- alice
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let subject = std::env::args().nth(1).unwrap_or_else(|| "alice".into());
    let api = std::env::var("KEYTURN_API_ADDR").unwrap_or_else(|_| "127.0.0.1:8391".into());
    let token = std::env::var("KEYTURN_TOKEN")?;
    let body = serde_json::json!({"claims": {"sub": subject, "aud": "orders-api"}, "ttl": "5m"})
        .to_string();
    // Plain HTTP/1.1 so the example has no dependencies beyond serde_json.
    let mut stream = TcpStream::connect(&api)?;
    write!(
        stream,
        "POST /v1/keysets/default/sign HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, json) = response.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    let reply: serde_json::Value = serde_json::from_str(json)?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("keyturn refused: {}", reply["error"]["message"]).into());
    }
    println!("{}", reply["token"].as_str().unwrap_or_default());
    eprintln!(
        "kid {} jti {} exp {}",
        reply["kid"], reply["jti"], reply["exp"]
    );
    Ok(())
}
