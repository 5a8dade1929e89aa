//! The command-line tool end to end: every command, local and on S3, exit
//! codes and JSON output.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Stdio;

use common::*;

fn fixture(root: &Path) {
    build(
        root,
        &[
            Entry::File("notes.txt", b"hello from the command line\n".to_vec()),
            Entry::File("empty", Vec::new()),
            Entry::File("data/random.bin", noise(3 << 20, 11)),
            Entry::File("data/log.txt", text(1 << 20, 12)),
            Entry::Dir("data/empty-dir"),
            Entry::Symlink("link", "notes.txt"),
            Entry::HardLink("data/hard", "notes.txt"),
            Entry::Sparse("vm.raw", 16 << 20, vec![(4 << 20, noise(300_000, 13))]),
            Entry::Fifo("fifo"),
        ],
    );
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"na\xefve.txt")), b"not utf-8").unwrap();
}

fn round_trip(cli: &Cli) {
    let src = cli.path("src");
    fixture(&src);
    cli.init();

    let first = cli.backup(&[&src]);
    assert_eq!(first["summary"]["files_new"], 7, "{first}");
    assert!(first["parent"].is_null());

    // Nothing changed: nothing read, nothing added.
    let second = cli.backup(&[&src]);
    assert_eq!(second["parent"], first["snapshot_id"]);
    assert_eq!(second["summary"]["bytes_read"], 0, "{second}");
    assert_eq!(second["summary"]["data_blobs_added"], 0, "{second}");

    fs::write(src.join("notes.txt"), b"changed\n").unwrap();
    let third = cli.json(&["backup", src.to_str().unwrap(), "--tag", "nightly,weekly"]);
    // notes.txt and data/hard, its hard link.
    assert_eq!(third["summary"]["files_changed"], 2, "{third}");

    let snaps = cli.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 3);
    assert_eq!(snaps[2]["tags"], serde_json::json!(["nightly", "weekly"]));
    let table = cli.ok(&["snapshots", "--tag", "weekly"]);
    assert!(table.contains("nightly,weekly") && table.contains("1 snapshots"), "{table}");

    let ls = cli.ok(&["ls", "latest", src.to_str().unwrap()]);
    for name in ["notes.txt", "data/random.bin", "data/empty-dir", "link", "fifo", "vm.raw"] {
        assert!(ls.contains(&src.join(name).to_string_lossy().into_owned()), "{name} missing from\n{ls}");
    }
    let long = cli.ok(&["ls", "-l", "latest", src.join("link").to_str().unwrap()]);
    assert!(long.starts_with("lrwxrwxrwx") && long.trim_end().ends_with("-> notes.txt"), "{long}");

    let first_id = first["snapshot_id"].as_str().unwrap();
    let diff = cli.ok(&["diff", &first_id[..10], "latest"]);
    assert!(diff.contains(&format!("M    {}", src.join("notes.txt").display())), "{diff}");
    assert!(diff.contains("0 added, 0 removed, 2 modified"), "{diff}");

    let target = cli.path("restore");
    let restored = cli.json(&["restore", "latest", "--target", target.to_str().unwrap(), "--verify"]);
    assert_eq!(restored["summary"]["errors"], 0);
    assert_same_tree(&src, &restored_path(&target, &src));

    let dumped = cli.ok(&["dump", "latest", src.join("data/log.txt").to_str().unwrap()]);
    assert_eq!(dumped.as_bytes(), fs::read(src.join("data/log.txt")).unwrap());
    // An image into a file: same bytes, holes where the zeros were.
    let image = cli.path("vm-restored.raw");
    fs::write(&image, vec![1u8; 20 << 20]).unwrap(); // longer than the image: cut to size
    cli.ok(&["dump", "latest", src.join("vm.raw").to_str().unwrap(), "--output", image.to_str().unwrap()]);
    assert_eq!(fs::read(&image).unwrap(), fs::read(src.join("vm.raw")).unwrap());
    use std::os::unix::fs::MetadataExt;
    assert!(fs::metadata(&image).unwrap().blocks() * 512 < 2 << 20, "the holes were written out");

    // A stream.
    let stream = text(2 << 20, 14);
    let mut child = cli
        .command(&["--json", "backup", "--stdin", "--stdin-filename", "db.sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let dumped = cli.command(&["dump", "latest"]).output().unwrap();
    assert!(dumped.status.success());
    assert_eq!(dumped.stdout, stream);

    // Retention: keep the newest file snapshot and the stream.
    let forgot = cli.json(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(forgot["removed"].as_array().unwrap().len(), 2, "{forgot}");
    assert!(forgot["prune"]["blobs_unused"].as_u64().unwrap() > 0, "{forgot}");
    cli.check_clean(true);
    assert_eq!(cli.json(&["snapshots"]).as_array().unwrap().len(), 2);
    let again = cli.path("restore2");
    cli.ok(&["restore", "latest", "--target", again.to_str().unwrap()]);
    let files_snapshot =
        cli.json(&["snapshots", "--path", src.to_str().unwrap()])[0]["id"].as_str().unwrap().to_string();
    cli.ok(&["restore", &files_snapshot, "--target", again.to_str().unwrap()]);
    assert_same_tree(&src, &restored_path(&again, &src));
}

#[test]
fn every_command_works_on_a_local_repository() {
    round_trip(&Cli::local());
}

#[test]
fn every_command_works_on_an_s3_repository() {
    let server = backstop_testkit::S3Server::start(&["backups"]);
    round_trip(&Cli::s3(&server, "backups"));
}

#[test]
fn mistakes_get_documented_exit_codes_and_clear_messages() {
    let cli = Cli::local();
    let out = cli.run(&["snapshots"]);
    assert_eq!(code(&out), 10, "{}", output_text(&out));
    assert!(output_text(&out).contains("backstop init"));

    assert_eq!(code(&cli.run(&["init", "--compression", "30"])), 2, "an out-of-range level is a usage error");
    cli.init();
    let out = cli.run(&["init"]);
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains("already exists"), "{}", output_text(&out));

    let out = cli.command(&["snapshots"]).env("BACKSTOP_PASSWORD", "wrong").output().unwrap();
    assert_eq!(code(&out), 12, "{}", output_text(&out));
    assert!(output_text(&out).contains("wrong password"));

    let out = cli.command(&["snapshots"]).env_remove("BACKSTOP_PASSWORD").output().unwrap();
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains("BACKSTOP_PASSWORD_FILE"), "{}", output_text(&out));

    let out = cli.run(&["restore", "latest"]);
    assert_eq!(code(&out), 2, "missing --target is a usage error");
    let out = cli.run(&["restore", "latest", "--target", cli.path("t").to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains("no snapshots"), "{}", output_text(&out));
    let out = cli.run(&["forget"]);
    assert!(output_text(&out).contains("no keep rule"), "{}", output_text(&out));
    let out = cli.run(&["backup", cli.path("does-not-exist").to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains("does-not-exist"));
    let out = cli.run(&["check", "--read-data-subset", "150%"]);
    assert_eq!(code(&out), 2);
    let out = cli.command(&["snapshots"]).env("BACKSTOP_REPOSITORY", "ftp://x").output().unwrap();
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains("s3://"), "{}", output_text(&out));
}

#[test]
fn help_documents_exit_codes() {
    let cli = Cli::local();
    let help = cli.ok(&["--help"]);
    for needle in ["Exit codes", "130", "BACKSTOP_PASSWORD_FILE", "backup", "restore", "prune"] {
        assert!(help.contains(needle), "{needle} missing from --help");
    }
}

#[test]
fn key_slots_can_be_added_changed_and_removed() {
    let cli = Cli::local();
    cli.init();
    let second = cli.path("second-password");
    fs::write(&second, "second password\n").unwrap();
    let added = cli.json(&["key", "add", "--new-password-file", second.to_str().unwrap()]);
    let added_id = added["key_id"].as_str().unwrap().to_string();
    let keys = cli.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);

    let with_second = |args: &[&str]| {
        cli.command(args).env_remove("BACKSTOP_PASSWORD").env("BACKSTOP_PASSWORD_FILE", &second).output().unwrap()
    };
    assert!(with_second(&["snapshots"]).status.success());

    // The key in use cannot be removed; another one can.
    let out = with_second(&["key", "remove", &added_id[..8]]);
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains("opened the repository with"), "{}", output_text(&out));
    cli.ok(&["key", "remove", &added_id[..8]]);
    assert_eq!(code(&with_second(&["snapshots"])), 12);

    let third = cli.path("third-password");
    fs::write(&third, "third\n").unwrap();
    cli.ok(&["key", "passwd", "--new-password-file", third.to_str().unwrap()]);
    assert_eq!(code(&cli.run(&["snapshots"])), 12, "the old password no longer opens it");
    let out = cli
        .command(&["snapshots"])
        .env_remove("BACKSTOP_PASSWORD")
        .env("BACKSTOP_PASSWORD_FILE", &third)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn an_unreadable_file_is_named_and_the_rest_is_saved_with_exit_code_3() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let cli = Cli::local();
    let src = cli.path("src");
    build(&src, &[Entry::File("ok.txt", b"fine".to_vec()), Entry::File("secret.txt", b"hidden".to_vec())]);
    fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    cli.init();
    // Root reads anything: run the backup as an unprivileged user then.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        for p in [cli.dir.path(), &src] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o777)).unwrap();
        }
        std::process::Command::new("chmod").args(["-R", "a+rwX", &cli.location]).status().unwrap();
        fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    }
    let mut cmd = cli.command(&["backup", src.to_str().unwrap()]);
    if root {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert_eq!(code(&out), 3, "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret.txt"), "the warning names the file: {stderr}");
    assert!(stderr.contains("could not be read"), "{stderr}");
    let ls = cli.ok(&["ls", "latest"]);
    assert!(ls.contains("ok.txt"), "{ls}");
}

#[test]
fn sources_back_up_with_source_and_restore_with_to() {
    let cli = Cli::local();
    cli.init();
    // An image with a changed-block map, as the CLI takes it.
    let disk = cli.path("disk.raw");
    let f = fs::File::create(&disk).unwrap();
    f.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(256 << 10, 1), 1 << 20).unwrap();
    let spec = format!("image:{}", disk.display());
    let first = cli.json(&["backup", "--source", &spec, "--source-opt", "generation=1"]);
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(4096, 2), 3 << 20).unwrap();
    let map = cli.path("disk.cbt.json");
    fs::write(&map, r#"{"generation": 2, "parent_generation": 1, "extents": [[3145728, 4096]]}"#).unwrap();
    let cbt = format!("cbt={}", map.display());
    let second = cli.json(&["backup", "--source", &spec, "--source-opt", &cbt]);
    assert_eq!(second["parent"], first["snapshot_id"]);
    assert!(second["summary"]["bytes_read"].as_u64().unwrap() <= 8192, "{second}");
    let restored = cli.path("restored.raw");
    let to = format!("image:{}", restored.display());
    cli.ok(&["restore", "latest", "--to", &to]);
    assert_eq!(fs::read(&restored).unwrap(), fs::read(&disk).unwrap());

    // A command, and one that fails: no snapshot, a non-zero exit naming it.
    cli.ok(&["backup", "--source", "command:seq 1 5000", "--source-opt", "filename=seq.txt"]);
    let sink = cli.path("sink");
    let to = format!("command:cat > {}", sink.display());
    cli.ok(&["restore", "latest", "--to", &to]);
    assert!(fs::read_to_string(&sink).unwrap().ends_with("4999\n5000\n"));
    let before = cli.json(&["snapshots"]).as_array().unwrap().len();
    let out = cli.run(&["backup", "--source", "command:echo half; exit 4"]);
    assert_eq!(code(&out), 1, "{}", output_text(&out));
    assert!(output_text(&out).contains("exit status: 4"), "{}", output_text(&out));
    assert_eq!(cli.json(&["snapshots"]).as_array().unwrap().len(), before);

    let out = cli.run(&["backup", "--source", "image:relative.raw"]);
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains("must be absolute"), "{}", output_text(&out));
    let out = cli.run(&["backup", "--source", "nfs:/x"]);
    assert!(output_text(&out).contains("unknown source kind"), "{}", output_text(&out));
}

#[test]
fn kubernetes_resources_back_up_and_restore_into_another_namespace() {
    let cli = Cli::local();
    cli.init();
    // The testkit's stand-in API server: no cluster runs here.
    let cluster = backstop_testkit::kubernetes::FakeCluster::start();
    cluster.apply(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    cluster.apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}}, "data": {"port": "8080"}}));
    let kubeconfig = cli.path("kubeconfig");
    cluster.write_kubeconfig(&kubeconfig, "fake");
    let kc = format!("kubeconfig={}", kubeconfig.display());
    let out =
        cli.json(&["backup", "--source", "kubernetes:fake", "--source-opt", &kc, "--source-opt", "selector=app=web"]);
    assert_eq!(out["summary"]["files_new"], 2, "{out}");
    let ls = cli.ok(&["ls", "latest"]);
    assert!(ls.contains("/shop/configmaps/web.yaml") && ls.contains("/_cluster/namespaces/shop.yaml"), "{ls}");
    let yaml = cli.ok(&["dump", "latest", "/shop/configmaps/web.yaml"]);
    assert!(yaml.starts_with("apiVersion: v1\nkind: ConfigMap\n") && !yaml.contains("resourceVersion"), "{yaml}");

    let restored = cli.ok(&[
        "restore",
        "latest",
        "--to",
        "kubernetes:fake",
        "--to-opt",
        &kc,
        "--to-opt",
        "namespace_map=shop:shop2",
    ]);
    assert!(restored.contains("shop/configmaps/web.yaml -> kubernetes:shop2/configmaps/web (created)"), "{restored}");
    assert_eq!(cluster.get("configmaps", Some("shop2"), "web").unwrap()["data"]["port"], "8080");
    let out = cli.run(&["restore", "latest", "--to", "kubernetes:fake", "--to-opt", &kc, "--to-opt", "conflict=merge"]);
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains("not skip or overwrite"), "{}", output_text(&out));
    let out = cli.run(&["backup", "--source", "kubernetes:nosuchcontext", "--source-opt", &kc]);
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains("nosuchcontext"), "{}", output_text(&out));
}

#[test]
fn files_from_exclude_caches_and_one_file_system() {
    let cli = Cli::local();
    cli.init();
    let src = cli.path("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::create_dir_all(src.join("mnt")).unwrap();
    fs::write(src.join("keep/a.txt"), "a").unwrap();
    fs::write(src.join("cache/CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n").unwrap();
    fs::write(src.join("cache/blob"), vec![1u8; 10000]).unwrap();
    let list = cli.path("list.txt");
    fs::write(&list, format!("# what to back up\n{}\n", src.display())).unwrap();
    cli.ok(&["backup", "--files-from", list.to_str().unwrap(), "--exclude-caches"]);
    let listing = cli.ok(&["ls", "latest"]);
    assert!(listing.contains("keep/a.txt"), "{listing}");
    assert!(listing.contains("cache/CACHEDIR.TAG"), "the tag is kept: {listing}");
    assert!(!listing.contains("cache/blob"), "the cache's contents are not: {listing}");

    // A mount below the path (a tmpfs) is recorded but not entered with
    // --one-file-system.
    let bin = cli.command(&[]).get_program().to_owned();
    let mnt = src.join("mnt");
    let script = format!(
        "echo inside > {mnt}/other-fs.txt && {bin} backup --one-file-system {src} && {bin} ls latest",
        mnt = mnt.display(),
        bin = bin.to_string_lossy(),
        src = src.display()
    );
    let envs: Vec<_> = cli.command(&[]).get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))).collect();
    let out = with_tmpfs_at(&mnt, &script, &envs);
    assert!(out.status.success(), "{}", output_text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("/mnt"), "the mount point is recorded: {listing}");
    assert!(!listing.contains("other-fs.txt"), "its contents are not: {listing}");
    assert!(listing.contains("keep/a.txt"));
}

#[test]
fn an_io_error_is_said_once() {
    let cli = Cli::local();
    cli.init();
    let src = cli.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "x").unwrap();
    cli.backup(&[&src]);
    // A target beneath a regular file cannot be made.
    let blocker = cli.path("blocker");
    fs::write(&blocker, "a file").unwrap();
    let out = cli.run(&["restore", "latest", "--target", blocker.join("sub").to_str().unwrap()]);
    assert!(!out.status.success());
    let text = output_text(&out);
    assert_eq!(text.matches("os error").count(), 1, "{text}");
}
