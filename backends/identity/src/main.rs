//! Dev OpenID Provider (placeholder; built in issue 5).
fn main() {}
