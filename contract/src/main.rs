//! Prints the contract as JSON: `cargo run -p audit-contract > contract/contract.json`.

fn main() {
    let spec = audit_contract::spec::spec();
    println!(
        "{}",
        serde_json::to_string_pretty(&spec).unwrap_or_default()
    );
}
