//! The viewer pages, embedded in the binary: plain HTML, CSS and JavaScript, no CDN, no framework.

/// `/`: pick a room.
pub const INDEX_HTML: &str = include_str!("../web/index.html");
/// The room picker's script (no inline scripts: the pages' Content-Security-Policy forbids them).
pub const INDEX_JS: &str = include_str!("../web/index.js");
/// `/room/<name>`: watch every camera in the room.
pub const ROOM_HTML: &str = include_str!("../web/room.html");
/// The room page's script: signaling, one `RTCPeerConnection` per camera, tiles and stats.
pub const VIEWER_JS: &str = include_str!("../web/viewer.js");
/// Styles for both pages.
pub const STYLE_CSS: &str = include_str!("../web/style.css");

/// The Content-Security-Policy of every response: the pages load only their own scripts,
/// styles and WebSocket, and no other site may frame them.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
