//! Every YAML config shipped in `config/` must load, validate and compile. Data files that
//! configs refer to (API key hashes) live in `config/data/` and are checked through them.

use std::path::Path;

#[test]
fn shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("config dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "data") {
                    continue;
                }
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                if let Err(errors) = meshgate::server::compile_file(&path) {
                    panic!("{} is invalid: {errors:#?}", path.display());
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no config files found");
}
