pub mod quota;
