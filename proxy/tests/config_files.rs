//! Every YAML file shipped in `config/` must pass `meshgate validate`: proxy configs load,
//! validate and compile; a mesh topology (`mesh.yaml`, read by `meshgate up`) loads and
//! resolves. Data files that configs refer to (API key hashes) live in `config/data/` and
//! are checked through them.
//!
//! The proxy configs a topology starts (the shop edge and sidecars) read ports, secrets
//! and certificate paths from the environment `meshgate up` sets, so they are checked with
//! that environment by `meshgate up --check` in `tests/tests/up.rs`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("config dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "data") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let files = yaml_files(&dir);
    let canonical = |p: &Path| std::fs::canonicalize(p).expect("existing file");
    let mut from_mesh = HashSet::new();
    let mut meshes = 0;
    for path in &files {
        if meshgate::up::mesh::is_topology(path) {
            let mesh = meshgate::up::mesh::load(path)
                .unwrap_or_else(|e| panic!("{} is invalid: {e:#?}", path.display()));
            from_mesh.insert(canonical(&mesh.edge.config));
            for s in &mesh.services {
                from_mesh.insert(canonical(&s.sidecar.config));
            }
            meshes += 1;
        }
    }
    assert!(meshes > 0, "config/mesh.yaml is recognised as a topology");
    let mut checked = 0;
    for path in &files {
        if meshgate::up::mesh::is_topology(path) || from_mesh.contains(&canonical(path)) {
            continue;
        }
        if let Err(errors) = meshgate::server::compile_file(path) {
            panic!("{} is invalid: {errors:#?}", path.display());
        }
        checked += 1;
    }
    assert!(checked > 0, "no standalone config files found");
    assert!(
        from_mesh.len() >= 5,
        "the shop edge and four sidecars: {from_mesh:?}"
    );
}
