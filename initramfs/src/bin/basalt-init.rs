//! `basalt-init`: PID 1 of the Basalt initramfs. See the `basalt_initramfs` crate docs.

fn main() {}
