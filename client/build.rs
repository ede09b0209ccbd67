fn main() {
    cynic_codegen::register_schema("audit")
        .from_sdl_file("../schema.graphql")
        .expect("schema.graphql is readable")
        .as_default()
        .expect("schema.graphql registers");
    println!("cargo::rerun-if-changed=../schema.graphql");
}
