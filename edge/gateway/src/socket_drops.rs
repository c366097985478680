//! Datagrams the kernel dropped from the gateway's socket (its receive buffer was full):
//! Linux counts them per socket in the last column of `/proc/net/udp` and `/proc/net/udp6`.
//! Read once a second into `switchyard_gateway_udp_kernel_drops`, so a burst the gateway
//! never saw is still visible.

use std::os::fd::AsRawFd;
use std::time::Duration;

use prometheus::IntGauge;
use tracing::warn;

/// The inode of `socket`, which names it in `/proc/net/udp`.
pub fn socket_inode(socket: &impl AsRawFd) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The drop count of the socket with `inode` in a `/proc/net/udp`-format table.
pub fn drops_in(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let row_inode: u64 = fields.get(9)?.parse().ok()?;
        (row_inode == inode).then(|| fields.last()?.parse().ok())?
    })
}

/// Keep `gauge` at the kernel's drop count for the socket with `inode`, until cancelled.
pub async fn watch(inode: u64, gauge: IntGauge) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut warned = false;
    loop {
        tick.tick().await;
        let found = ["/proc/net/udp", "/proc/net/udp6"].iter().find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| drops_in(&t, inode))
        });
        match found {
            Some(drops) => {
                if drops > 0 && gauge.get() == 0 {
                    warn!(
                        drops,
                        "the kernel is dropping datagrams: the UDP receive buffer overflowed"
                    );
                }
                gauge.set(i64::try_from(drops).unwrap_or(i64::MAX));
            }
            None if !warned => {
                warned = true;
                warn!(
                    inode,
                    "socket not found in /proc/net/udp; kernel drops are not reported"
                );
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:1771 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 424242 2 0000000000000000 36333
  124: 0100007F:1772 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 515151 2 0000000000000000 0
";

    #[test]
    fn reads_the_drops_of_the_socket_with_that_inode() {
        assert_eq!(drops_in(TABLE, 424242), Some(36333));
        assert_eq!(drops_in(TABLE, 515151), Some(0));
        assert_eq!(drops_in(TABLE, 1), None);
    }

    #[test]
    fn finds_a_real_socket_and_its_drop_count() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let inode = socket_inode(&socket).expect("inode");
        let table = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
        assert_eq!(drops_in(&table, inode), Some(0));
    }
}
