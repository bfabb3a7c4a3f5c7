//! The client side of the root's management channel (COM2, exposed by QEMU
//! as a Unix socket): send one command line, read the response up to the
//! end-of-response line (a lone EOT, `\x04`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// What ends every response.
pub const END_OF_RESPONSE: &str = "\x04";

/// Why a command could not be run.
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be reached.
    Connect(std::io::Error),
    /// Reading or writing failed, or the response never ended.
    Io(std::io::Error),
    /// The channel closed before the response ended.
    Closed,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(
                f,
                "cannot reach the management socket: {e} (is `cargo xtask run` running?)"
            ),
            Self::Io(e) => write!(f, "management channel: {e}"),
            Self::Closed => f.write_str("management channel closed before the response ended"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A connection to the management channel.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connect, retrying until `wait` has passed (QEMU may still be starting).
    pub fn connect(socket: &Path, wait: Duration) -> Result<Self, ClientError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if start.elapsed() >= wait => return Err(ClientError::Connect(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let writer = stream.try_clone().map_err(ClientError::Io)?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Run `command`; the response text without its terminator. Gives up
    /// after `timeout`.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<String, ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(ClientError::Io)?;
        let line = command.replace(['\n', '\r'], " ");
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .map_err(ClientError::Io)?;
        let mut response = String::new();
        let deadline = Instant::now() + timeout;
        loop {
            let mut raw = Vec::new();
            let n = self.reader.read_until(b'\n', &mut raw).map_err(ClientError::Io)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            let text = String::from_utf8_lossy(&raw).replace('\r', "");
            if text.trim_end_matches('\n') == END_OF_RESPONSE {
                return Ok(response);
            }
            response.push_str(&text);
            if Instant::now() > deadline {
                return Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no end of response",
                )));
            }
        }
    }
}

/// Is this response a refusal?
pub fn is_error(response: &str) -> bool {
    response.lines().any(|l| l.starts_with("error: "))
}
