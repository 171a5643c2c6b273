//! softirq_top kernel programs: not implemented yet.
#![no_std]
#![no_main]

tracer_ebpf::license!();
