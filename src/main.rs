fn main() {
    // The init stage must run before anything else exists in this process: no
    // runtime, no threads (docs/ARCHITECTURE.md, process model).
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(nixcell::sandbox::proto::INIT_ARG))
    {
        nixcell::sandbox::init::main();
    }
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("__nixcell-probe-userns"))
    {
        nixcell::doctor::probe_userns_child();
    }
    std::process::exit(nixcell::cli::main());
}
