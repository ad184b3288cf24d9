//! `ferrule-proxy`: the sidecar binary; `ferrule-proxy init`, which installs a pod's
//! interception rules; and `ferrule-proxy wait-ready`, which an app's entrypoint runs first.
//! Everything lives in the library; see `app`, `init` and `wait`.

use clap::Parser;

fn main() {
    // `ferrule-proxy init ...` installs a pod's interception rules and exits: a different
    // command line, and no runtime (see `init`).
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        let args = ferrule_proxy::init::Args::parse_from(std::env::args_os().skip(1));
        std::process::exit(ferrule_proxy::init::main(args));
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "wait-ready")
    {
        let args = ferrule_proxy::wait::Args::parse_from(std::env::args_os().skip(1));
        std::process::exit(ferrule_proxy::wait::main(args));
    }
    let args = ferrule_proxy::app::Args::parse();
    ferrule_proxy::app::init_logging(&args.log_format);
    ferrule_proxy::app::apply_sched_slice(args.sched_slice);
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .expect("building the tokio runtime");
    if let Err(e) = rt.block_on(ferrule_proxy::app::run(args)) {
        eprintln!("ferrule-proxy: {e}");
        std::process::exit(1);
    }
}
