//! The wgpu device for tests that need a GPU (or software) adapter. They run only with
//! `HLM_TEST_WGPU=1` (CI sets it, with Mesa's lavapipe); otherwise they skip with a note.

pub fn device_if_enabled() -> Option<burn::tensor::Device> {
    if std::env::var("HLM_TEST_WGPU").as_deref() != Ok("1") {
        eprintln!("skipped: set HLM_TEST_WGPU=1 to run on wgpu");
        return None;
    }
    Some(hlm_backends::parse_device("wgpu").expect("wgpu device"))
}
