//! What the deployment tests drive from outside: the container engine, the image that
//! `scripts/build-image` makes from the test's own binary, and the tools venv's Python (Helm's
//! engine, podman-compose, jsonschema). Used by `tests/image.rs`, `tests/compose.rs` and
//! `tests/helm.rs`.
//!
//! Declared by a test binary as `#[path = "common/deploy.rs"] mod deploy;`.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

/// `SYNC_ENGINE_TEST_IMAGE`: scripts/test sets it to 1 unless it is set already (and logs it).
/// 1 builds and runs images, 0 skips that; unset fails, like any backend this suite needs: a
/// silently skipped test would look like a pass.
pub const IMAGE_ENV: &str = "SYNC_ENGINE_TEST_IMAGE";

/// A path in this repository.
pub fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

/// True when `SYNC_ENGINE_TEST_IMAGE` is 1; false (saying so on stderr) when it is 0.
pub fn images_wanted() -> bool {
    match std::env::var(IMAGE_ENV).as_deref() {
        Ok("1") => true,
        Ok("0") => {
            eprintln!("SKIPPED: {IMAGE_ENV}=0, no image is built or run");
            false
        }
        other => {
            panic!("{IMAGE_ENV} is {other:?}: run with scripts/test (it sets 1), or set 0 to skip")
        }
    }
}

/// Builds `tag` with scripts/build-image from this test's binary, and names the engine to run
/// it with; None when SYNC_ENGINE_TEST_IMAGE=0.
pub fn build_image(tag: &str) -> Option<String> {
    if !images_wanted() {
        return None;
    }
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(repo("scripts/build-image"))
        .args(["--binary", env!("CARGO_BIN_EXE_sync-engine"), "--tag", tag])
        .status()
        .expect("run scripts/build-image");
    assert!(status.success(), "scripts/build-image failed: {status}");
    eprintln!("scripts/build-image took {:.0?}", started.elapsed());
    Some(engine())
}

/// The stand-in service images (`scripts/stand-in-images`), built unless their recipes are
/// unchanged since the last build.
pub fn build_stand_ins() {
    let built = run("bash", &[&repo("scripts/stand-in-images")]);
    assert!(
        built.status.success(),
        "scripts/stand-in-images: {}",
        said(&built)
    );
}

/// The engine scripts/build-image uses: the same choice, made after it installed one if none
/// was there.
pub fn engine() -> String {
    std::env::var("SYNC_ENGINE_CONTAINER_ENGINE").unwrap_or_else(|_| {
        let podman = Command::new("podman").arg("--version").output();
        if podman.is_ok_and(|o| o.status.success()) {
            "podman"
        } else {
            "docker"
        }
        .into()
    })
}

/// Runs `program args`, waiting for its output.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

/// stdout and stderr of `out`, for messages.
pub fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// scripts/test's venv Python (`SYNC_ENGINE_TEST_PYTHON`), or the venv's default place when the
/// test runs by itself after scripts/test has set it up once.
pub fn python() -> String {
    if let Ok(python) = std::env::var("SYNC_ENGINE_TEST_PYTHON") {
        return python;
    }
    let venv = std::env::var("SYNC_ENGINE_VENV")
        .unwrap_or_else(|_| "/var/tmp/sync-engine-tools/venv".to_string());
    let python = format!("{venv}/bin/python");
    assert!(
        Path::new(&python).exists(),
        "SYNC_ENGINE_TEST_PYTHON is not set and there is no {python}: run the suite with scripts/test \
         (it installs the Helm and compose tools into its venv and sets it)"
    );
    python
}

/// Runs a unittest script with the venv's Python and asserts every case ran and passed.
pub fn python_unittest(script: &str) {
    let python = python();
    let script = repo(script);
    let ran = Command::new(&python)
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("{python} cannot run ({e}): run the suite with scripts/test"));
    let said = said(&ran);
    assert!(
        ran.status.success(),
        "{script} failed ({}); its report:\n{said}",
        ran.status
    );
    // unittest's closing line: every case ran and passed, none was skipped
    assert!(said.lines().any(|line| line == "OK"), "{said}");
    println!("{said}");
}
