//! Just enough H.264 Annex-B parsing to know what the encoder really sends: NAL unit types and
//! the SPS's profile, constraint flags and level, which become the SDP `profile-level-id` of
//! every answer, and the profile matching that decides whether a viewer's offer can take it.

/// NAL unit type: coded slice of an IDR picture.
pub const NAL_IDR: u8 = 5;
/// NAL unit type: sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// NAL unit type: picture parameter set.
pub const NAL_PPS: u8 = 8;

/// The NAL units of an Annex-B byte stream (start codes removed).
pub fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (n, &s) in starts.iter().enumerate() {
        let mut end = starts
            .get(n + 1)
            .map(|&next| next - 3)
            .unwrap_or(data.len());
        // A 4-byte start code leaves a trailing zero on the previous unit.
        while end > s && data[end - 1] == 0 && n + 1 < starts.len() {
            end -= 1;
        }
        if end > s {
            out.push(&data[s..end]);
        }
    }
    out
}

/// The type of one NAL unit.
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map(|b| b & 0x1f).unwrap_or(0)
}

/// Profile, constraint flags and level from an SPS NAL unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsProfile {
    /// `profile_idc` (66 baseline, 77 main, 100 high).
    pub profile_idc: u8,
    /// The constraint_set flags byte.
    pub constraints: u8,
    /// `level_idc` (31 = 3.1).
    pub level_idc: u8,
}

impl SpsProfile {
    /// Read it from an SPS NAL unit (header byte included).
    pub fn parse(sps: &[u8]) -> Option<SpsProfile> {
        if nal_type(sps) != NAL_SPS || sps.len() < 4 {
            return None;
        }
        Some(SpsProfile {
            profile_idc: sps[1],
            constraints: sps[2],
            level_idc: sps[3],
        })
    }

    /// Constrained baseline: baseline profile with constraint_set1 (every browser decodes it).
    pub fn is_constrained_baseline(&self) -> bool {
        self.profile_idc == 66 && self.constraints & 0x40 != 0
    }

    /// The SDP `profile-level-id` this SPS corresponds to (e.g. `42e01f`).
    pub fn profile_level_id(&self) -> String {
        format!(
            "{:02x}{:02x}{:02x}",
            self.profile_idc, self.constraints, self.level_idc
        )
    }

    /// Read an SDP `profile-level-id` (six hex digits).
    pub fn from_profile_level_id(hex: &str) -> Option<SpsProfile> {
        let hex = hex.trim();
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
        Some(SpsProfile {
            profile_idc: byte(0)?,
            constraints: byte(2)?,
            level_idc: byte(4)?,
        })
    }

    /// The profile as browsers tell profiles apart, if it is one they know.
    pub fn profile(&self) -> Option<Profile> {
        Profile::of(self.profile_idc, self.constraints)
    }

    /// The level as people write it: `3.1`, `4`.
    pub fn level(&self) -> String {
        level_name(self.level_idc)
    }
}

impl std::fmt::Display for SpsProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.profile() {
            Some(p) => write!(f, "{p} level {}", self.level()),
            None => write!(f, "profile_idc {} level {}", self.profile_idc, self.level()),
        }
    }
}

/// The H.264 profiles WebRTC endpoints negotiate. Several `profile_idc` + constraint-flag
/// combinations name the same profile (42e0 and 42c0 are both constrained baseline), so offers
/// and streams are compared by this, not by bytes (RFC 6184 section 8.1, read the way libwebrtc
/// reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// What every browser decodes.
    ConstrainedBaseline,
    /// Baseline with FMO/ASO allowed.
    Baseline,
    /// Main.
    Main,
    /// High without B-frames and with the constrained flags.
    ConstrainedHigh,
    /// High.
    High,
    /// High 4:4:4 Predictive.
    PredictiveHigh444,
}

impl Profile {
    /// Classify `profile_idc` and the constraint-flags byte (its low 4 bits must be 0).
    pub fn of(profile_idc: u8, constraints: u8) -> Option<Profile> {
        // (profile_idc, mask, value, profile): the flags byte matches when
        // flags & mask == value; the first match wins.
        const PATTERNS: &[(u8, u8, u8, Profile)] = &[
            (0x42, 0b0100_1111, 0b0100_0000, Profile::ConstrainedBaseline),
            (0x4d, 0b1000_1111, 0b1000_0000, Profile::ConstrainedBaseline),
            (0x58, 0b1100_1111, 0b1100_0000, Profile::ConstrainedBaseline),
            (0x42, 0b0100_1111, 0b0000_0000, Profile::Baseline),
            (0x58, 0b1100_1111, 0b1000_0000, Profile::Baseline),
            (0x4d, 0b1010_1111, 0b0000_0000, Profile::Main),
            (0x64, 0b1111_1111, 0b0000_0000, Profile::High),
            (0x64, 0b1111_1111, 0b0000_1100, Profile::ConstrainedHigh),
            (0xf4, 0b1111_1111, 0b0000_0000, Profile::PredictiveHigh444),
        ];
        PATTERNS
            .iter()
            .find(|(idc, mask, value, _)| *idc == profile_idc && constraints & mask == *value)
            .map(|(_, _, _, p)| *p)
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Profile::ConstrainedBaseline => "constrained baseline",
            Profile::Baseline => "baseline",
            Profile::Main => "main",
            Profile::ConstrainedHigh => "constrained high",
            Profile::High => "high",
            Profile::PredictiveHigh444 => "high 4:4:4 predictive",
        })
    }
}

/// The payload types an SDP maps to H.264.
fn h264_payload_types(sdp: &str) -> Vec<&str> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter(|l| l.to_ascii_uppercase().contains(" H264/90000"))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// The `profile-level-id`s of an SDP's H.264 formats with packetization-mode 1 (the mode
/// campeer packetizes in), in the offer's order. A format without the parameter is left out:
/// webrtc-rs cannot match it (and no browser sends one).
pub fn offered_h264(sdp: &str) -> Vec<SpsProfile> {
    let pts = h264_payload_types(sdp);
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=fmtp:"))
        .filter_map(|l| {
            let (pt, params) = l.split_once(' ').unwrap_or((l, ""));
            let params: Vec<&str> = params.split(';').map(str::trim).collect();
            if !pts.contains(&pt.trim()) || !params.contains(&"packetization-mode=1") {
                return None;
            }
            let id = params
                .iter()
                .find_map(|p| p.strip_prefix("profile-level-id="))?;
            SpsProfile::from_profile_level_id(id)
        })
        .collect()
}

/// The `profile-level-id` to answer an offer with for a stream whose SPS is `stream`: the
/// profile bytes of the first offered format of the same profile (so the answer names a format
/// the viewer offered) and the stream's own level. `None` when the viewer offered no format of
/// that profile.
pub fn answer_profile_level_id(offer: &str, stream: &SpsProfile) -> Option<String> {
    let want = stream.profile()?;
    offered_h264(offer)
        .into_iter()
        .find(|o| o.profile() == Some(want))
        .map(|o| {
            format!(
                "{:02x}{:02x}{:02x}",
                o.profile_idc, o.constraints, stream.level_idc
            )
        })
}

/// `sdp` with `profile-level-id=<id>` on each H.264 format line whose profile is `id`'s.
pub fn with_profile_level_id(sdp: &str, id: &str) -> String {
    let Some(want) = SpsProfile::from_profile_level_id(id).and_then(|p| p.profile()) else {
        return sdp.to_owned();
    };
    let h264_pts = h264_payload_types(sdp);
    let fix = |line: &str| -> Option<String> {
        let rest = line.strip_prefix("a=fmtp:")?;
        let (pt, params) = rest.split_once(' ')?;
        if !h264_pts.contains(&pt) {
            return None;
        }
        let mut changed = false;
        let params: Vec<String> = params
            .split(';')
            .map(|p| match p.trim().strip_prefix("profile-level-id=") {
                Some(old)
                    if SpsProfile::from_profile_level_id(old).and_then(|o| o.profile())
                        == Some(want) =>
                {
                    changed = true;
                    format!("profile-level-id={id}")
                }
                _ => p.to_owned(),
            })
            .collect();
        changed.then(|| format!("a=fmtp:{pt} {}", params.join(";")))
    };
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        match fix(body) {
            Some(fixed) => {
                out.push_str(&fixed);
                out.push_str(&line[body.len()..]);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// A `level_idc` as people (and GStreamer caps) write it: 31 is `3.1`, 40 is `4`.
pub fn level_name(level_idc: u8) -> String {
    format!("{}.{}", level_idc / 10, level_idc % 10).replace(".0", "")
}

/// The SPS of an access unit, if it carries one.
pub fn sps_of(au: &[u8]) -> Option<SpsProfile> {
    nal_units(au)
        .into_iter()
        .find(|n| nal_type(n) == NAL_SPS)
        .and_then(SpsProfile::parse)
}

/// For an access unit: is it an IDR, and if so are SPS and PPS in front of its first slice?
pub fn idr_has_headers(au: &[u8]) -> Option<bool> {
    let types: Vec<u8> = nal_units(au).iter().map(|n| nal_type(n)).collect();
    let idr = types.iter().position(|&t| t == NAL_IDR)?;
    let before = &types[..idr];
    Some(before.contains(&NAL_SPS) && before.contains(&NAL_PPS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let au = [
            0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0, 0, 1, 0x68, 0xce, 0, 0, 0, 1, 0x65, 0x88, 0x84,
        ];
        let units = nal_units(&au);
        assert_eq!(units.len(), 3);
        assert_eq!(
            units.iter().map(|n| nal_type(n)).collect::<Vec<_>>(),
            [7, 8, 5]
        );
        let sps = SpsProfile::parse(units[0]).unwrap();
        assert!(sps.is_constrained_baseline());
        assert_eq!(sps.profile_level_id(), "42e01f");
        assert_eq!(idr_has_headers(&au), Some(true));
        assert_eq!(idr_has_headers(&[0, 0, 1, 0x65, 1]), Some(false));
        assert_eq!(idr_has_headers(&[0, 0, 1, 0x41, 1]), None);
    }

    #[test]
    fn profiles_are_compared_the_way_browsers_compare_them() {
        let p = |hex: &str| SpsProfile::from_profile_level_id(hex).unwrap().profile();
        assert_eq!(p("42e01f"), Some(Profile::ConstrainedBaseline));
        assert_eq!(p("42c01e"), Some(Profile::ConstrainedBaseline));
        assert_eq!(p("4d8028"), Some(Profile::ConstrainedBaseline));
        assert_eq!(p("42001f"), Some(Profile::Baseline));
        assert_eq!(p("4d001f"), Some(Profile::Main));
        assert_eq!(p("640c1f"), Some(Profile::ConstrainedHigh));
        assert_eq!(p("64001f"), Some(Profile::High));
        assert_eq!(p("6e001f"), None);
        assert_eq!(SpsProfile::from_profile_level_id("42e0"), None);
        assert_eq!(SpsProfile::from_profile_level_id("zz0000"), None);
        assert_eq!(SpsProfile::from_profile_level_id("+2e0+f"), None);
        assert_eq!(SpsProfile::from_profile_level_id("42é01"), None);
        assert_eq!(
            SpsProfile::from_profile_level_id("42c01e")
                .unwrap()
                .to_string(),
            "constrained baseline level 3"
        );
    }

    /// Chromium 156's video formats (trimmed): H.264 in four profiles, two packetization modes.
    const CHROME_OFFER: &str = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 103 104 107 108 109 114 115\r\n\
        a=rtpmap:96 VP8/90000\r\n\
        a=rtpmap:103 H264/90000\r\na=fmtp:103 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
        a=rtpmap:104 H264/90000\r\na=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n\
        a=rtpmap:107 H264/90000\r\na=fmtp:107 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        a=rtpmap:108 H264/90000\r\na=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f\r\n\
        a=rtpmap:109 H264/90000\r\na=fmtp:109 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f\r\n\
        a=rtpmap:114 H264/90000\r\na=fmtp:114 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f\r\n\
        a=rtpmap:115 rtx/90000\r\na=fmtp:115 apt=114\r\n";

    #[test]
    fn the_answer_names_an_offered_profile_and_the_stream_level() {
        let ids: Vec<String> = offered_h264(CHROME_OFFER)
            .iter()
            .map(SpsProfile::profile_level_id)
            .collect();
        assert_eq!(ids, ["42001f", "42e01f", "4d001f", "640c1f", "64001f"]);
        let x264_720p = SpsProfile::from_profile_level_id("42c01f").unwrap();
        assert_eq!(
            answer_profile_level_id(CHROME_OFFER, &x264_720p).as_deref(),
            Some("42e01f")
        );
        let cb_1080p = SpsProfile::from_profile_level_id("42c028").unwrap();
        assert_eq!(
            answer_profile_level_id(CHROME_OFFER, &cb_1080p).as_deref(),
            Some("42e028")
        );
        let high = SpsProfile::from_profile_level_id("640032").unwrap();
        assert_eq!(
            answer_profile_level_id(CHROME_OFFER, &high).as_deref(),
            Some("640032")
        );
        // Safari-like: constrained baseline and constrained high only.
        let safari = CHROME_OFFER
            .replace("64001f", "640c1f")
            .replace("4d001f", "42e01f");
        assert_eq!(answer_profile_level_id(&safari, &high), None);
        // packetization-mode 0 only: nothing campeer can send.
        let mode0 = "m=video 9 UDP/TLS/RTP/SAVPF 104\r\na=rtpmap:104 H264/90000\r\na=fmtp:104 packetization-mode=0;profile-level-id=42e01f\r\n";
        assert!(offered_h264(mode0).is_empty());
        // No profile-level-id: left out (webrtc-rs could not match it).
        let bare = "m=video 9 UDP/TLS/RTP/SAVPF 104\r\na=rtpmap:104 H264/90000\r\na=fmtp:104 packetization-mode=1\r\n";
        assert!(offered_h264(bare).is_empty());
    }

    #[test]
    fn the_answer_text_gets_the_stream_level() {
        let answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 107 99\r\na=rtpmap:107 H264/90000\r\n\
            a=fmtp:107 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
            a=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=107\r\n";
        let fixed = with_profile_level_id(answer, "42e028");
        assert_eq!(
            fixed,
            answer.replace("profile-level-id=42e01f", "profile-level-id=42e028")
        );
        // Another profile's line is not touched.
        assert_eq!(with_profile_level_id(answer, "640028"), answer);
    }

    #[test]
    fn high_profile_is_not_constrained_baseline() {
        let sps = SpsProfile::parse(&[0x67, 100, 0, 40]).unwrap();
        assert!(!sps.is_constrained_baseline());
        assert_eq!(sps.profile_level_id(), "640028");
    }
}
