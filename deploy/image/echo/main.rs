//! A tiny HTTP/1.1 echo app for the image tests (std only, no crates): answers every request
//! with 200 and a JSON object of the request headers it received (names lower-cased), plus
//! "path" and "method". `/slow` waits 3 s first (the drain test's in-flight request).
//! Listens on $LISTEN_ADDR (default 127.0.0.1:3000). Exits 0 on SIGTERM (it runs as PID 1,
//! where a signal without a handler is ignored).
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

fn handle(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut fields = vec![format!("\"method\":\"{}\"", esc(&method)), format!("\"path\":\"{}\"", esc(&path))];
    let mut body_len = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                body_len = v.trim().parse().unwrap_or(0);
            }
            fields.push(format!("\"{}\":\"{}\"", esc(&k), esc(v.trim())));
        }
    }
    if body_len > 0 {
        let mut buf = vec![0u8; body_len];
        std::io::Read::read_exact(&mut reader, &mut buf)?;
    }
    if path.starts_with("/slow") {
        std::thread::sleep(Duration::from_secs(3));
    }
    let body = format!("{{{}}}", fields.join(","));
    let mut s = stream;
    write!(
        s,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        body
    )?;
    s.flush()
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(code: i32) -> !;
}

extern "C" fn on_term(_: i32) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(0) }
}

fn main() {
    // SAFETY: installs a handler that only calls _exit.
    unsafe {
        signal(15, on_term);
    }
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("echo 1");
        return;
    }
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = TcpListener::bind(&addr).unwrap_or_else(|e| {
        eprintln!("echo: bind {addr}: {e}");
        std::process::exit(1)
    });
    eprintln!("echo: listening on {addr}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = handle(stream);
        });
    }
}
