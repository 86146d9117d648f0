pub mod fits;
pub mod gen;
pub mod testdata;
