//! Registers the server's schema with cynic, so the client's GraphQL types are checked
//! against it when the crate compiles.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=../schema.graphql");
    cynic_codegen::register_schema("audit")
        .from_sdl_file("../schema.graphql")?
        .as_default()?;
    Ok(())
}
