//! Sandbox executors against hostile programs. Every attack runs on both executors and must be
//! contained (the attack's own assert never passes, the host is unchanged) with the executor
//! answering a known program correctly afterwards.

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use coupled_grpo::sandbox::{
    CpuLimit, Executor, Limits, Outcome, Pool, ProcessConfig, ProcessExecutor, Program, WasmConfig,
    WasmExecutor,
};

/// Short timeouts keep the suite fast on 2 cores; every hostile test is bounded by them.
fn limits() -> Limits {
    Limits {
        test_timeout: Duration::from_secs(1),
        memory_bytes: 256 << 20,
        ..Limits::default()
    }
}

/// Sandbox uids of the shared process executor (no other test binary uses them).
const SANDBOX_UID: u32 = 0x7c00_0000;

fn wasm() -> Arc<dyn Executor> {
    static EXEC: OnceLock<Arc<WasmExecutor>> = OnceLock::new();
    EXEC.get_or_init(|| Arc::new(WasmExecutor::new(WasmConfig::default()).expect("wasm executor")))
        .clone()
}

fn process() -> Arc<dyn Executor> {
    static EXEC: OnceLock<Arc<ProcessExecutor>> = OnceLock::new();
    EXEC.get_or_init(|| {
        Arc::new(
            ProcessExecutor::new(ProcessConfig {
                workers: 2,
                sandbox_uid: SANDBOX_UID,
                ..Default::default()
            })
            .expect("process executor (needs root)"),
        )
    })
    .clone()
}

fn executors() -> [Arc<dyn Executor>; 2] {
    [wasm(), process()]
}

/// The wasm executor and a process executor of its own, with a uid only this test uses, so
/// that [`sandbox_processes`] sees no sample of a concurrent test.
fn executors_with_private_uid(uid: u32) -> [Arc<dyn Executor>; 2] {
    let process = ProcessExecutor::new(ProcessConfig {
        workers: 1,
        sandbox_uid: uid,
        ..Default::default()
    })
    .expect("process executor (needs root)");
    [wasm(), Arc::new(process)]
}

fn program(code: &str, tests: &[&str]) -> Program {
    Program {
        code: code.into(),
        tests: tests.iter().map(|t| t.to_string()).collect(),
    }
}

fn run(exec: &dyn Executor, code: &str, tests: &[&str]) -> Vec<Outcome> {
    let out = exec
        .execute(&program(code, tests), &limits())
        .unwrap_or_else(|e| panic!("{}: sandbox failed: {e}", exec.name()));
    assert_eq!(out.len(), tests.len(), "{}", exec.name());
    out
}

fn failed(detail: &str) -> Outcome {
    Outcome::Failed {
        detail: detail.into(),
    }
}

/// A known program with a known answer: the executor still works after an attack.
fn assert_still_works(exec: &dyn Executor) {
    let out = run(
        exec,
        "import math\ndef hyp(a, b):\n    return math.hypot(a, b)",
        &[
            "assert hyp(3, 4) == 5",
            "assert hyp(1, 1) == 2",
            "assert hyp(0, 2) == 2",
        ],
    );
    assert_eq!(
        out,
        vec![Outcome::Passed, failed("AssertionError"), Outcome::Passed],
        "{} after an attack",
        exec.name()
    );
}

/// Every outcome of an attack must be a non-pass; returns them for finer checks.
fn assert_contained(exec: &dyn Executor, code: &str, tests: &[&str]) -> Vec<Outcome> {
    let out = run(exec, code, tests);
    for (test, outcome) in tests.iter().zip(&out) {
        assert!(
            !outcome.passed(),
            "{}: attack passed: {test:?} -> {outcome:?}",
            exec.name()
        );
    }
    assert_still_works(exec);
    out
}

/// Processes running as sandbox uid `uid` still alive (they must all be gone).
fn sandbox_processes(uid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let owner = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if owner == Some(uid) {
            found.push(status.lines().next().unwrap_or_default().to_string());
        }
    }
    found
}

fn py_str(s: &str) -> String {
    format!("{s:?}")
}

// ---------------------------------------------------------------------------------------------
// Semantics

#[test]
fn semantics_pass_fail_raise() {
    for exec in executors() {
        let out = run(
            &*exec,
            "def add(a, b):\n    return a + b\nSEEN = []",
            &[
                "assert add(1, 2) == 3",
                "assert add(1, 2) == 4, 'wrong sum'",
                "add(1)",
                "SEEN.append(1)\nassert SEEN == [1]",
                "assert add('a', 'b') == 'ab'",
            ],
        );
        assert_eq!(out[0], Outcome::Passed, "{}", exec.name());
        assert_eq!(
            out[1],
            failed("AssertionError: wrong sum"),
            "{}",
            exec.name()
        );
        assert!(
            matches!(&out[2], Outcome::Failed { detail } if detail.starts_with("TypeError")),
            "{}: {:?}",
            exec.name(),
            out[2]
        );
        assert_eq!(out[3], Outcome::Passed);
        assert_eq!(out[4], Outcome::Passed);
    }
}

#[test]
fn a_raising_solution_fails_every_test_with_its_detail() {
    for exec in executors() {
        let out = run(
            &*exec,
            "def f():\n    return 1\nraise ValueError('bad solution')",
            &["assert f() == 1", "assert True"],
        );
        assert_eq!(
            out,
            vec![failed("ValueError: bad solution"); 2],
            "{}",
            exec.name()
        );
        let out = run(&*exec, "def f(:\n    pass", &["assert True"]);
        assert!(
            matches!(&out[0], Outcome::Failed { detail } if detail.starts_with("SyntaxError")),
            "{}: {out:?}",
            exec.name()
        );
    }
}

#[test]
fn stdlib_modules_of_the_issue_import() {
    let modules = coupled_grpo::sandbox::TASK_STDLIB;
    let code = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("\n");
    for exec in executors() {
        assert_eq!(
            run(
                &*exec,
                &code,
                &[
                    "assert math.gcd(12, 18) == 6",
                    "assert hashlib.sha256(b'').hexdigest().startswith('e3b0')"
                ]
            ),
            vec![Outcome::Passed; 2],
            "{}",
            exec.name()
        );
    }
    let wasm = WasmExecutor::new(WasmConfig::default()).unwrap();
    let probed = wasm.probe_imports(modules).unwrap();
    for (module, result) in modules.iter().zip(&probed) {
        assert!(result.is_ok(), "wasm cannot import {module}: {result:?}");
    }
    // Not snapshotted, so absent: the probe can fail.
    assert!(wasm.probe_imports(&["sqlite3"]).unwrap()[0].is_err());
}

#[test]
fn random_is_not_shared_between_samples() {
    for exec in executors() {
        let draw = |_: usize| {
            let out = run(
                &*exec,
                "import random\nX = random.getrandbits(64)",
                &["assert X % 2 == 0"],
            );
            out[0].clone()
        };
        // 16 fair coin flips all equal: 2^-15 by chance, certain if the PRNG state is shared.
        let flips: Vec<_> = (0..16).map(draw).collect();
        assert!(
            flips.iter().any(|f| *f != flips[0]),
            "{}: identical random draws",
            exec.name()
        );
    }
}

/// A sample that rewrites the interpreter (builtins, stdlib functions, an attribute on every
/// module, a big heap buffer) leaves nothing for the next sample to see. For wasm this checks the
/// memory reset between instances. The dirty pages lie scattered over the heap, more regions than
/// one page-map scan reports, so the vendored wasmtime must resume the scan. A reset that stops
/// early leaves the next instance a tampered, half-reset heap: with the resume deliberately
/// broken, its tests trap. There is one instance slot, so both samples reuse the same memory.
#[test]
fn a_sample_cannot_change_what_the_next_one_sees() {
    let wasm = WasmExecutor::new(WasmConfig {
        max_instances: 1,
        ..WasmConfig::default()
    })
    .expect("wasm executor");
    let tamper = "import builtins, math, sys\n\
                  blob = bytearray(b'x' * (4 << 20))\n\
                  for name, module in list(sys.modules.items()):\n\
                  \x20   try:\n\
                  \x20       setattr(module, '_tampered', name)\n\
                  \x20   except Exception:\n\
                  \x20       pass\n\
                  math.sqrt = lambda x: 3\n\
                  builtins.len = lambda x: 0";
    let check = [
        "assert len([1, 2]) == 2",
        "import math\nassert math.sqrt(4) == 2",
        "import sys\nassert [n for n, m in list(sys.modules.items()) if hasattr(m, '_tampered')] == []",
    ];
    for exec in [&wasm as &dyn Executor, &*process()] {
        for round in 0..3 {
            // The tampering sample sees its own changes...
            let own = run(exec, tamper, &["assert len([1, 2]) == 0"]);
            assert_eq!(own, vec![Outcome::Passed], "{} round {round}", exec.name());
            // ...and the next one sees none of them.
            let next = run(exec, "", &check);
            assert_eq!(
                next,
                vec![Outcome::Passed; check.len()],
                "{} round {round}",
                exec.name()
            );
        }
    }
}

/// Replacing the builtins the harness calls (`exec`, `compile`, `dict`, `len`, `range`) must not
/// turn the sample's own tests into passes: a cheap reward hack for a policy under RL.
#[test]
fn replacing_the_harness_builtins_does_not_pass_tests() {
    let hack = "import builtins\n\
                for name in ('exec', 'compile', 'dict', 'len', 'range', 'str', 'type'):\n\
                \x20   setattr(builtins, name, lambda *a, **k: None)";
    for exec in executors() {
        let out = run(&*exec, hack, &["assert False", "raise ValueError('no')"]);
        assert_eq!(
            out,
            vec![failed("AssertionError"), failed("ValueError: no")],
            "{}",
            exec.name()
        );
        assert_still_works(&*exec);
    }
}

#[test]
fn a_trapping_or_hanging_test_is_charged_alone() {
    for exec in executors() {
        let out = run(
            &*exec,
            "def f():\n    return 1",
            &[
                "assert f() == 1",
                "while True:\n    pass",
                "assert f() == 1",
                "import os\nos._exit(0)",
                "assert f() == 1",
                "import sys\nsys.exit(0)",
                "assert f() == 2",
                "assert f() == 1",
            ],
        );
        assert_eq!(out[0], Outcome::Passed, "{}", exec.name());
        assert_eq!(out[1], Outcome::Timeout, "{}", exec.name());
        assert_eq!(out[2], Outcome::Passed, "{}", exec.name());
        assert!(
            matches!(out[3], Outcome::Crashed { .. }),
            "{}: {:?}",
            exec.name(),
            out[3]
        );
        assert_eq!(out[4], Outcome::Passed, "{}", exec.name());
        assert!(
            matches!(&out[5], Outcome::Crashed { detail } if detail.contains("SystemExit")),
            "{}: {:?}",
            exec.name(),
            out[5]
        );
        assert_eq!(out[6], failed("AssertionError"), "{}", exec.name());
        assert_eq!(out[7], Outcome::Passed, "{}", exec.name());
    }
}

#[test]
fn exiting_before_the_asserts_is_never_a_pass() {
    for exec in executors() {
        for exit in [
            "import os\nos._exit(0)",
            "import sys\nsys.exit(0)",
            "raise SystemExit",
        ] {
            let code = format!("def f():\n    return 1\n{exit}");
            let out = run(&*exec, &code, &["assert f() == 1", "assert True"]);
            for o in &out {
                assert!(
                    matches!(o, Outcome::Crashed { .. }),
                    "{}: {exit:?} -> {o:?}",
                    exec.name()
                );
            }
        }
        assert_still_works(&*exec);
    }
}

#[test]
fn pool_preserves_order_over_both_executors() {
    for exec in executors() {
        let pool = Pool::new(exec.clone(), 2);
        let programs: Vec<Program> = (0..12)
            .map(|i| {
                program(
                    &format!("def f():\n    return {i}"),
                    &[&format!("assert f() == {i}"), "assert f() == 5"],
                )
            })
            .collect();
        let out = pool.execute_batch(&programs, &limits());
        assert_eq!(out.len(), 12);
        for (i, r) in out.into_iter().enumerate() {
            let r = r.unwrap();
            assert_eq!(r[0], Outcome::Passed, "{} program {i}", exec.name());
            assert_eq!(r[1].passed(), i == 5, "{} program {i}", exec.name());
        }
    }
}

#[test]
fn epoch_mode_interrupts_loops() {
    let exec = WasmExecutor::new(WasmConfig {
        cpu_limit: CpuLimit::Epoch,
        ..Default::default()
    })
    .unwrap();
    let start = Instant::now();
    let out = run(
        &exec,
        "x = 1",
        &["while True:\n    x += 1", "assert x == 1"],
    );
    assert_eq!(out, vec![Outcome::Timeout, Outcome::Passed]);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_still_works(&exec);
}

// ---------------------------------------------------------------------------------------------
// Attacks

#[test]
fn host_files_are_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "s3cr3t-7f1d").unwrap();
    let secret = py_str(secret.to_str().unwrap());
    for exec in executors() {
        assert_contained(
            &*exec,
            "import os",
            &[
                "assert open('/etc/passwd').read().startswith('root')",
                &format!("assert open({secret}).read() == 's3cr3t-7f1d'"),
                &format!("assert os.path.exists({secret})"),
                "assert 'etc' in os.listdir('/')",
                "assert os.listdir('/root') is not None",
                "assert open('/proc/self/status').read()",
            ],
        );
    }
}

#[test]
fn environment_secrets_are_invisible() {
    // The host's own environment (PATH, and cargo's variables under `cargo test`) is the secret.
    let secrets: Vec<String> = ["PATH", "CARGO_MANIFEST_DIR", "HOME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .filter(|v| v.len() > 3)
        .collect();
    assert!(!secrets.is_empty());
    for exec in executors() {
        for secret in &secrets {
            let s = py_str(secret);
            assert_contained(
                &*exec,
                "import os",
                &[
                    &format!("assert any(v == {s} for v in os.environ.values())"),
                    &format!("assert {s}.encode() in open('/proc/self/environ', 'rb').read()"),
                    &format!("assert {s}.encode() in open('/proc/1/environ', 'rb').read()"),
                    &format!("assert {s}.encode() in open('/proc/' + str(os.getppid()) + '/environ', 'rb').read()"),
                ],
            );
        }
    }
}

#[test]
fn writes_outside_the_sandbox_do_not_land() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("written.txt");
    let t = py_str(target.to_str().unwrap());
    for exec in executors() {
        // Host system directories are absent or read-only in both sandboxes.
        assert_contained(
            &*exec,
            "import os",
            &[
                "open('/etc/coupled-grpo-pwned', 'w').write('x')",
                "open('/root/.coupled-grpo-pwned', 'w').write('x')",
                "open('/usr/lib/coupled-grpo-pwned', 'w').write('x')",
            ],
        );
        // The host's temp dir path may be recreated inside the process sandbox's private /tmp:
        // what matters is that nothing lands on the host.
        run(
            &*exec,
            "import os",
            &[
                &format!("open({t}, 'w').write('pwned')"),
                &format!("os.makedirs(os.path.dirname({t}), exist_ok=True)\nopen({t}, 'w').write('pwned')"),
            ],
        );
        assert_still_works(&*exec);
        assert!(!target.exists(), "{}", exec.name());
        assert!(!Path::new("/etc/coupled-grpo-pwned").exists());
        assert!(!Path::new("/root/.coupled-grpo-pwned").exists());
        assert!(!Path::new("/usr/lib/coupled-grpo-pwned").exists());
    }
    // The process sandbox has a private, writable /tmp of its own, emptied between samples.
    let exec = process();
    let out = run(
        &*exec,
        "import tempfile, os\nd = tempfile.mkdtemp()\nopen(os.path.join(d, 'f'), 'w').write('1')",
        &[
            "assert open(os.path.join(d, 'f')).read() == '1'",
            "assert d.startswith('/tmp/')",
        ],
    );
    assert_eq!(out, vec![Outcome::Passed; 2]);
    let out = run(&*exec, "import os", &["assert os.listdir('/tmp') == []"]);
    assert_eq!(out, vec![Outcome::Passed]);
    // Nor does a sample's change of its mode outlive it.
    let out = run(&*exec, "import os", &["os.chmod('/tmp', 0o777)"]);
    assert_eq!(out, vec![Outcome::Passed]);
    let out = run(
        &*exec,
        "import os",
        &["assert os.stat('/tmp').st_mode & 0o777 == 0o700"],
    );
    assert_eq!(out, vec![Outcome::Passed]);
}

#[test]
fn loopback_connections_fail() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    for exec in executors() {
        assert_contained(
            &*exec,
            "",
            &[
                &format!("import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\ns.sendall(b'hi')"),
                &format!("import socket\ns = socket.socket()\ns.settimeout(0.5)\ns.connect(('localhost', {port}))"),
                "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:%d/' % 1, timeout=0.5)",
            ],
        );
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("{}: the listener saw {other:?}", exec.name()),
        }
    }
}

#[test]
fn subprocesses_cannot_escape() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let m = py_str(marker.to_str().unwrap());
    for exec in executors() {
        assert_contained(
            &*exec,
            "import os",
            &[
                &format!("import subprocess\nsubprocess.run(['touch', {m}], check=True)"),
                &format!("assert os.system('touch ' + {m}) == 0"),
                &format!("os.execv('/bin/sh', ['sh', '-c', 'touch ' + {m}])"),
                "import subprocess\nassert subprocess.check_output(['cat', '/etc/passwd'])",
            ],
        );
        assert!(!marker.exists(), "{}", exec.name());
    }
}

#[test]
fn open_files_are_capped_in_the_process_sandbox() {
    // RLIMIT_NOFILE (64 by default) binds the sample; the server keeps serving afterwards.
    let exec = process();
    let out = run(
        &*exec,
        "import os",
        &["fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(1000)]"],
    );
    match &out[0] {
        Outcome::Failed { detail } => assert!(detail.contains("Too many open files"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_still_works(&*exec);
}

#[test]
fn fork_bombs_are_contained() {
    const UID: u32 = 0x7c01_0000;
    for exec in executors_with_private_uid(UID) {
        let start = Instant::now();
        assert_contained(
            &*exec,
            "import os",
            &["while True:\n    try:\n        os.fork()\n    except Exception:\n        pass"],
        );
        // Generous: CI shares 2 cores with a running bomb; a hang would be 60+ s.
        assert!(start.elapsed() < Duration::from_secs(30), "{}", exec.name());
    }
    assert!(
        sandbox_processes(UID).is_empty(),
        "{:?}",
        sandbox_processes(UID)
    );
}

#[test]
fn memory_bombs_hit_the_cap() {
    for exec in executors() {
        let out = assert_contained(
            &*exec,
            "",
            &[
                "x = []\nwhile True:\n    x.append(bytearray(1 << 20))",
                "x = [0] * 10**9",
            ],
        );
        assert_eq!(out[0], Outcome::Memory, "{}", exec.name());
        // Later tests of the same program still run.
        let out = run(
            &*exec,
            "def f():\n    return 2",
            &["x = bytearray(1 << 30)", "assert f() == 2"],
        );
        assert!(!out[0].passed());
        assert_eq!(out[1], Outcome::Passed, "{}", exec.name());
    }
}

#[test]
fn infinite_loops_time_out_even_with_sigalrm_ignored() {
    for exec in executors() {
        let out = assert_contained(
            &*exec,
            "import signal\ntry:\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\nexcept Exception:\n    pass",
            &["while True:\n    pass", "import signal\ntry:\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\nexcept Exception:\n    pass\nwhile True:\n    pass"],
        );
        assert_eq!(out, vec![Outcome::Timeout; 2], "{}", exec.name());
    }
}

#[test]
fn sleeps_time_out() {
    for exec in executors() {
        let start = Instant::now();
        let out = assert_contained(
            &*exec,
            "import time",
            &[
                "time.sleep(60)",
                "time.sleep(0.3)\ntime.sleep(0.3)\ntime.sleep(0.3)\ntime.sleep(0.3)",
            ],
        );
        assert_eq!(out, vec![Outcome::Timeout; 2], "{}", exec.name());
        assert!(start.elapsed() < Duration::from_secs(10), "{}", exec.name());
        // A short sleep is legitimate.
        assert_eq!(
            run(&*exec, "import time", &["time.sleep(0.01)"]),
            vec![Outcome::Passed]
        );
    }
}

#[test]
fn deep_recursion_is_contained() {
    for exec in executors() {
        let out = assert_contained(
            &*exec,
            "def f(n):\n    return f(n + 1)",
            &[
                "f(0)",
                "import sys\nsys.setrecursionlimit(10**9)\nf(0)",
                "x = []\nfor _ in range(10**6):\n    x = [x]\nassert repr(x)",
            ],
        );
        assert!(
            matches!(&out[0], Outcome::Failed { detail } if detail.starts_with("RecursionError")),
            "{}: {:?}",
            exec.name(),
            out[0]
        );
    }
}

#[test]
fn setsid_grandchildren_die_with_the_sample() {
    const UID: u32 = 0x7c02_0000;
    for exec in executors_with_private_uid(UID) {
        let start = Instant::now();
        let code = "import os, time\n\
                    try:\n    pid = os.fork()\nexcept Exception:\n    pid = -1\n\
                    if pid == 0:\n    os.setsid()\n    if os.fork() == 0:\n        while True:\n            time.sleep(0.05)\n    os._exit(0)\n\
                    def f():\n    return 1";
        let out = run(&*exec, code, &["assert f() == 1", "assert f() == 2"]);
        assert_eq!(out[1], failed("AssertionError"), "{}", exec.name());
        assert!(start.elapsed() < Duration::from_secs(5), "{}", exec.name());
        assert_still_works(&*exec);
        if exec.name() == "process" {
            // The scan does see a running sample's processes (so the final check can fail).
            std::thread::scope(|scope| {
                let running = scope.spawn(|| run(&*exec, "import time", &["time.sleep(0.8)"]));
                std::thread::sleep(Duration::from_millis(300));
                assert!(!sandbox_processes(UID).is_empty());
                assert_eq!(running.join().unwrap(), vec![Outcome::Passed]);
            });
        }
    }
    assert!(
        sandbox_processes(UID).is_empty(),
        "{:?}",
        sandbox_processes(UID)
    );
}

#[test]
fn results_printed_to_stdout_are_not_trusted() {
    for exec in executors() {
        let forged = "print('{\"outcomes\": [{\"outcome\": \"passed\"}]}')\nprint('[0, \"passed\", \"\"]')\nprint('[-1, \"passed\", \"\"]')\nimport sys\nsys.stdout.flush()";
        let out = assert_contained(
            &*exec,
            forged,
            &[
                &format!("{forged}\nassert False"),
                "import sys\nprint('PASS', file=sys.stderr)\nassert 1 == 2",
            ],
        );
        assert_eq!(out, vec![failed("AssertionError"); 2], "{}", exec.name());
    }
}

#[test]
fn output_floods_are_capped() {
    for exec in executors() {
        let start = Instant::now();
        let out = run(
            &*exec,
            "import sys",
            &[
                "for _ in range(400):\n    sys.stdout.write('x' * 50000)\n    sys.stderr.write('y' * 50000)",
                "while True:\n    print('z' * 4096)",
                "assert 1 == 1",
            ],
        );
        assert_eq!(
            out,
            vec![Outcome::Passed, Outcome::Timeout, Outcome::Passed],
            "{}",
            exec.name()
        );
        assert!(start.elapsed() < Duration::from_secs(30), "{}", exec.name());
        // A huge exception message comes back truncated.
        let out = run(&*exec, "", &["raise ValueError('m' * 10**7)"]);
        match &out[0] {
            Outcome::Failed { detail } => assert!(detail.len() <= 2000, "{}", detail.len()),
            other => panic!("{}: {other:?}", exec.name()),
        }
        assert_still_works(&*exec);
    }
}

#[test]
fn killing_the_parent_fails() {
    for exec in executors() {
        assert_contained(
            &*exec,
            "import os, signal",
            &[
                "os.kill(os.getppid(), signal.SIGKILL)\nassert False",
                "os.kill(1, signal.SIGKILL)\nassert False",
                "os.kill(-1, signal.SIGKILL)\nassert False",
                "os.killpg(0, signal.SIGKILL)\nassert False",
            ],
        );
    }
}
