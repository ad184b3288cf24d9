//! `ferrule-proxy`: the sidecar binary. Everything lives in the library; see `app`.

use clap::Parser;

fn main() {
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
