//! The viewer pages, embedded in the binary: plain HTML, CSS and JavaScript, no CDN, no framework.

/// `/`: pick a room.
pub const INDEX_HTML: &str = include_str!("../web/index.html");
/// `/room/<name>`: watch every camera in the room.
pub const ROOM_HTML: &str = include_str!("../web/room.html");
/// The room page's script: signaling, one `RTCPeerConnection` per camera, tiles and stats.
pub const VIEWER_JS: &str = include_str!("../web/viewer.js");
/// Styles for both pages.
pub const STYLE_CSS: &str = include_str!("../web/style.css");
