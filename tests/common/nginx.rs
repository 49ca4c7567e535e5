//! Debian's nginx with its RTMP module, run by a test or a benchmark as the server an RTMP
//! push goes to.

use super::{TempDir, own_group_dying_with_parent};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nginx with the RTMP module on 127.0.0.1:`port`, `application live { live on; }`.
pub struct Nginx {
    child: Child,
    _dir: TempDir,
}

impl Nginx {
    pub fn start(port: u16) -> Nginx {
        let dir = TempDir::new("nginx-rtmp");
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
                 daemon off;\nmaster_process off;\npid {0}/nginx.pid;\n\
                 error_log {0}/error.log info;\nevents {{}}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; }} }} }}\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("nginx");
        cmd.arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        own_group_dying_with_parent(&mut cmd);
        let child = cmd.spawn().expect(
            "nginx runs (scripts/setup-debian.sh test installs nginx and libnginx-mod-rtmp)",
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx does not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
