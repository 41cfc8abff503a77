//! Which SM target to compile for, from the device's compute capability.

/// The NVRTC target for compute capability `major.minor`: `sm_XY`, with the
/// architecture-specific `a` suffix from SM 12 on (`sm_120a`, `sm_121a` on GB10), whose FP4
/// instructions are not forward compatible and which llama.cpp also builds as `12Xa`.
pub fn target(major: i32, minor: i32) -> String {
    if major >= 12 {
        format!("sm_{major}{minor}a")
    } else {
        format!("sm_{major}{minor}")
    }
}

/// The targets CI compiles every kernel for: RTX 3090, Jetson Orin, H100, RTX 50xx, GB10.
pub const CI_TARGETS: &[&str] = &["sm_86", "sm_87", "sm_90", "sm_120a", "sm_121a"];

/// The oldest compute capability the kernels are written for.
pub const MIN_CAPABILITY: (i32, i32) = (7, 5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_of_our_users_devices() {
        assert_eq!(target(8, 6), "sm_86"); // RTX 3090
        assert_eq!(target(8, 7), "sm_87"); // Jetson Orin Nano
        assert_eq!(target(9, 0), "sm_90"); // H100
        assert_eq!(target(12, 1), "sm_121a"); // GB10
        assert_eq!(target(12, 0), "sm_120a");
        for t in CI_TARGETS {
            let digits: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
            let (maj, min) = digits.split_at(digits.len() - 1);
            assert_eq!(target(maj.parse().unwrap(), min.parse().unwrap()), *t);
        }
    }
}
