//! Just enough H.264 Annex-B parsing to check what the encoder really sends: NAL unit types and
//! the SPS's profile, constraint flags and level (the SDP `profile-level-id`).

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
    fn high_profile_is_not_constrained_baseline() {
        let sps = SpsProfile::parse(&[0x67, 100, 0, 40]).unwrap();
        assert!(!sps.is_constrained_baseline());
        assert_eq!(sps.profile_level_id(), "640028");
    }
}
