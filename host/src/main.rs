fn main() -> std::process::ExitCode {
    atoll::cli::main()
}
