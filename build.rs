//! Build script. The default build compiles no native code of its own.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
