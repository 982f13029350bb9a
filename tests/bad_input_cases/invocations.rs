//! The bad data files, flags, output paths and recipes of `bad_inputs.rs`.

use crate::*;

/// Broken data files, out-of-range flags, unusable output paths, broken recipes. Returns the copy
/// of the GGUF file the output-path cases write beside, which must stay unchanged.
pub(crate) fn cases(fx: &Fixture, mut add: &mut AddCase) -> PathBuf {
    let m = s(&fx.model);
    let text = s(&fx.text);
    let data = s(&fx.data);
    let calib = s(&fx.calib);
    let adapter = s(&fx.adapter);
    let gguf = s(&fx.gguf);
    // ---- Data files. ----
    let d = |name: &str, body: &str| fx.write(name, body);
    let train_out = fx.p("train-out");
    let train = |data: &str| -> Vec<String> {
        [
            "train",
            "--model",
            &m,
            "--data",
            data,
            "--out",
            &s(&train_out),
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--val-size",
            "2",
            "--r",
            "4",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    // The range test's flags.
    for (name, extra, expect) in [
        (
            "train: --lr-min above --lr-max",
            &["--find-lr", "--lr-min", "1", "--lr-max", "0.1"][..],
            &["0 < --lr-min < --lr-max"][..],
        ),
        (
            "train: range test flags without --find-lr",
            &["--lr-max", "0.1"][..],
            &["add --find-lr"][..],
        ),
        (
            "train: --lr-from missing",
            &["--lr-from", "/nonexistent/lr_find.json"][..],
            &["--lr-from /nonexistent/lr_find.json"][..],
        ),
        (
            "train: --lr-from not a range test record",
            &["--lr-from", data.as_str()][..],
            &["not a range test record"][..],
        ),
    ] {
        let mut args = train(&data);
        args.extend(extra.iter().map(|x| x.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        add(name, &args, expect, Some(&train_out));
    }
    let mut train_case = |name: &str, data: String, expect: &[&str]| {
        let args = train(&data);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        add(name, &args, expect, Some(&train_out));
    };
    train_case(
        "train: data missing",
        s(&fx.p("nodata.json")),
        &["nodata.json"],
    );
    train_case("train: data empty", d("empty.json", ""), &["empty.json"]);
    train_case(
        "train: data not JSON",
        d("bad.json", "[{"),
        &["bad.json", "invalid JSON"],
    );
    train_case(
        "train: record without output",
        d("noout.json", r#"[{"instruction": "a", "input": ""}]"#),
        &["noout.json", "output"],
    );
    train_case(
        "train: output not a string",
        d(
            "numout.json",
            r#"[{"instruction": "a", "input": "", "output": 3}]"#,
        ),
        &["numout.json", "must be a string"],
    );
    train_case(
        "train: JSONL bad line",
        d("badline.jsonl", "{\"text\": \"a b c\"}\n{oops\n"),
        &["badline.jsonl", "invalid JSON"],
    );
    train_case(
        "train: empty array",
        d("none.json", "[]"),
        &["none.json", "no records"],
    );
    train_case(
        "train: too few examples for the validation split",
        d(
            "two.json",
            r#"[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": "", "output": "d"}]"#,
        ),
        &["--val-size"],
    );
    train_case("train: data is a directory", m.clone(), &["tiny"]);

    let ppl = |name: &str, file: String, expect: &[&str], add: &mut AddCase| {
        add(
            name,
            &[
                "eval", "ppl", "--model", &m, "--text", &file, "--seqlen", "16",
            ],
            expect,
            None,
        );
    };
    ppl(
        "ppl: text missing",
        s(&fx.p("notext.txt")),
        &["notext.txt"],
        &mut add,
    );
    ppl(
        "ppl: text empty",
        d("empty.txt", ""),
        &["fewer than one window"],
        &mut add,
    );
    ppl(
        "ppl: text too short",
        d("short.txt", "tiny"),
        &["fewer than one window"],
        &mut add,
    );
    ppl(
        "ppl: JSONL without text",
        d("notext.jsonl", "{\"body\": \"x\"}\n"),
        &["notext.jsonl:1", "\"text\""],
        &mut add,
    );
    ppl("ppl: text is a directory", m.clone(), &["tiny"], &mut add);

    let prune_out = fx.p("prune-out");
    let prune_calib = |name: &str, file: String, expect: &[&str], add: &mut AddCase| {
        add(
            name,
            &[
                "prune",
                "--model",
                &m,
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--calib",
                &file,
                "--nsamples",
                "2",
                "--seqlen",
                "16",
                "--out",
                &s(&prune_out),
            ],
            expect,
            Some(&prune_out),
        );
    };
    prune_calib(
        "prune: calib missing",
        s(&fx.p("nocalib.jsonl")),
        &["nocalib.jsonl"],
        &mut add,
    );
    prune_calib(
        "prune: calib JSONL without text",
        d("calibnotext.jsonl", "{\"body\": 1}\n"),
        &["calibnotext.jsonl:1", "\"text\""],
        &mut add,
    );
    prune_calib(
        "prune: calib empty",
        d("calibempty.jsonl", ""),
        &["calib"],
        &mut add,
    );

    let tasks_out = fx.p("tasks-out.json");
    let eval_dir = fx.p("evaldata");
    std::fs::create_dir(&eval_dir).unwrap();
    std::fs::write(
        eval_dir.join("rte_validation.jsonl"),
        "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": 7}\n",
    )
    .unwrap();
    std::fs::write(eval_dir.join("boolq_validation.jsonl"), "{\"question\": \n").unwrap();
    for (name, task, dir, expect) in [
        (
            "tasks: data dir missing",
            "rte",
            s(&fx.p("noeval")),
            vec!["rte_validation.jsonl", "missing"],
        ),
        (
            "tasks: label out of range",
            "rte",
            s(&eval_dir),
            vec!["rte_validation.jsonl:1", "out of range"],
        ),
        (
            "tasks: bad JSON line",
            "boolq",
            s(&eval_dir),
            vec!["boolq_validation.jsonl:1"],
        ),
        (
            "tasks: unknown task",
            "hellaswg",
            shared("eval"),
            vec!["hellaswg", "hellaswag"],
        ),
    ] {
        add(
            name,
            &[
                "eval",
                "tasks",
                "--model",
                &m,
                "--tasks",
                task,
                "--data-dir",
                &dir,
                "--out",
                &s(&tasks_out),
            ],
            &expect,
            Some(&tasks_out),
        );
    }

    // ---- Flags: ranges checked where they enter. ----
    let tr = |extra: &[&str]| -> Vec<String> { with_flags(train(&data), extra) };
    for (flag, value, expect) in [
        ("--lr", "-1", "learning rate"),
        ("--lr", "0", "learning rate"),
        ("--lr", "nan", "not a finite number"),
        ("--lr", "inf", "not a finite number"),
        ("--lr", "fast", "not a number"),
        ("--dropout", "1.5", "[0, 1)"),
        ("--dropout", "-0.1", "[0, 1)"),
        ("--dropout", "1", "[0, 1)"),
        ("--max-steps", "0", "at least one step"),
        ("--max-steps", "-3", "not a whole number"),
        ("--epochs", "0", "at least one epoch"),
        ("--batch-size", "0", "at least 1"),
        ("--micro-batch-size", "0", "at least 1"),
        ("--batch-size", "6", "multiple of --micro-batch-size"),
        ("--cutoff", "0", "at least 1"),
        (
            "--cutoff",
            "5000",
            "exceeds the model's max_position_embeddings 4096",
        ),
        ("--warmup-ratio", "1.5", "[0, 1]"),
        ("--weight-decay", "-1", "0 or more"),
        ("--scale", "-2", "greater than 0"),
        ("--lora-alpha", "0", "greater than 0"),
        ("--r", "0", "at least 1"),
        ("--r", "3", "not divisible by the SPP rows r = 3"),
        ("--eval-every", "0", "at least 1"),
        ("--save-every", "0", "at least 1"),
        ("--max-grad-norm", "0", "greater than 0"),
        ("--schedule", "step", "linear or cosine"),
        ("--method", "qlora", "qlora"),
        ("--targets", "q,xyz", "unknown target"),
        ("--seed", "-1", "'-1'"),
        ("--val-size", "100", "--val-size 100"),
        ("--train-on-inputs", "maybe", "maybe"),
    ] {
        let args = tr(&[flag, value]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        add(
            &format!("train {flag} {value}"),
            &args,
            &[expect],
            Some(&train_out),
        );
    }
    for (flag, value, expect) in [
        ("--nsamples", "0", "at least 1"),
        ("--nsamples", "100000000", "at most 1000000"),
        ("--seqlen", "1", "at least 2"),
        ("--seqlen", "100000", "max_position_embeddings"),
        ("--blocksize", "0", "at least 1"),
        ("--percdamp", "-1", "[0, 1]"),
        ("--percdamp", "nan", "not a finite number"),
        ("--sparsity", "1.5", "1.5"),
        ("--sparsity", "5:4", "5:4"),
        ("--sparsity", "half", "half"),
        ("--method", "random", "random"),
        ("--targets", "", "no targets"),
        ("--dtype", "f8", "unknown dtype"),
        ("--device", "tpu", "tpu"),
    ] {
        let po = s(&prune_out);
        let base = [
            "prune",
            "--model",
            &m,
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--calib",
            &calib,
            "--nsamples",
            "2",
            "--seqlen",
            "16",
            "--out",
            &po,
        ];
        let args = with_flags(base.iter().map(|x| x.to_string()).collect(), &[flag, value]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        add(
            &format!("prune {flag} {value}"),
            &args,
            &[expect],
            Some(&prune_out),
        );
    }
    add(
        "prune whose calibration cannot fit in memory",
        &[
            "prune",
            "--model",
            &m,
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--calib",
            &calib,
            "--nsamples",
            "1000000",
            "--seqlen",
            "4096",
            "--out",
            &s(&prune_out),
        ],
        &["this machine has", "--nsamples"],
        Some(&prune_out),
    );
    add(
        "prune with an adapter",
        &[
            "prune",
            "--model",
            &m,
            "--adapter",
            &adapter,
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
            "--out",
            &s(&prune_out),
        ],
        &["merge the adapter first"],
        Some(&prune_out),
    );
    for (extra, expect) in [
        (vec!["--max-windows", "0"], "at least one window"),
        (vec!["--seqlen", "0"], "at least 1"),
        (vec!["--seqlen", "1"], "at least 2"),
        (vec!["--seqlen", "100000"], "max_position_embeddings"),
    ] {
        let mut args = vec!["eval", "ppl", "--model", &m, "--text", &text];
        args.extend(extra.iter().copied());
        add(&format!("ppl {}", extra.join(" ")), &args, &[expect], None);
    }
    for (extra, expect) in [
        (vec!["--limit", "0"], "at least 1"),
        (vec!["--batch-size", "0"], "at least 1"),
        (vec!["--batch-tokens", "0"], "at least 1"),
    ] {
        let mut args = vec!["eval", "tasks", "--model", &m, "--tasks", "rte", "--out"];
        let to = s(&tasks_out);
        args.push(&to);
        args.extend(extra.iter().copied());
        add(
            &format!("tasks {}", extra.join(" ")),
            &args,
            &[expect],
            Some(&tasks_out),
        );
    }
    for (extra, expect) in [
        (vec!["--temperature", "-1"], "0 or more"),
        (vec!["--top-p", "0"], "(0, 1]"),
        (vec!["--top-p", "1.5"], "(0, 1]"),
        (vec!["-n", "many"], "many"),
    ] {
        let mut args = vec!["generate", "--model", &m, "--prompt", "Hi"];
        args.extend(extra.iter().copied());
        add(
            &format!("generate {}", extra.join(" ")),
            &args,
            &[expect],
            None,
        );
    }
    add(
        "generate without prompt",
        &["generate", "--model", &m],
        &["--prompt"],
        None,
    );

    // ---- Output paths. ----
    let existing_file = fx.p("existing.json");
    std::fs::write(&existing_file, "{\"keep\": true}").unwrap();
    let existing_dir = fx.p("existing-dir");
    std::fs::create_dir(&existing_dir).unwrap();
    std::fs::write(existing_dir.join("keep.txt"), "keep").unwrap();
    let gguf_copy = fx.p("copy.gguf");
    std::fs::copy(&fx.gguf, &gguf_copy).unwrap();
    let holder = fx.p("holder");
    std::fs::create_dir(&holder).unwrap();
    let held_gguf = holder.join("held.gguf");
    std::fs::copy(&fx.gguf, &held_gguf).unwrap();
    let ef = s(&existing_file);
    let ed = s(&existing_dir);
    let prune = |out: &str, force: bool| -> Vec<String> {
        let mut v: Vec<String> = [
            "prune",
            "--model",
            &m,
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
            "--out",
            out,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if force {
            v.push("--force".into());
        }
        v
    };
    let merge = |out: &str, force: bool| -> Vec<String> {
        let mut v: Vec<String> = ["merge", "--model", &m, "--adapter", &adapter, "--out", out]
            .iter()
            .map(|x| x.to_string())
            .collect();
        if force {
            v.push("--force".into());
        }
        v
    };
    let mut paths: Vec<(&str, Vec<String>, &str, PathBuf)> = vec![
        (
            "convert onto its own gguf",
            vec![
                "convert".into(),
                "gguf".into(),
                s(&gguf_copy),
                "--out".into(),
                s(&gguf_copy),
                "--force".into(),
            ],
            "is a file",
            gguf_copy.clone(),
        ),
        (
            "convert onto an existing file",
            vec![
                "convert".into(),
                "gguf".into(),
                gguf.clone(),
                "--out".into(),
                ef.clone(),
            ],
            "is a file",
            existing_file.clone(),
        ),
        (
            "convert onto an existing dir",
            vec![
                "convert".into(),
                "gguf".into(),
                gguf.clone(),
                "--out".into(),
                ed.clone(),
            ],
            "already exists",
            existing_dir.clone(),
        ),
        (
            "convert into the dir holding the gguf",
            vec![
                "convert".into(),
                "gguf".into(),
                s(&held_gguf),
                "--out".into(),
                s(&holder),
                "--force".into(),
            ],
            "contains the input",
            holder.clone(),
        ),
        (
            "prune onto its model",
            prune(&m, true),
            "is the input",
            fx.model.clone(),
        ),
        (
            "prune inside its model",
            prune(&s(&fx.model.join("sub")), true),
            "inside the input",
            fx.model.clone(),
        ),
        (
            "prune onto the model's parent",
            prune(&s(&fx.root), true),
            "contains the input",
            fx.model.clone(),
        ),
        (
            "prune onto a file",
            prune(&ef, true),
            "is a file",
            existing_file.clone(),
        ),
        (
            "prune onto an existing dir",
            prune(&ed, false),
            "already exists",
            existing_dir.clone(),
        ),
        (
            "merge onto its model",
            merge(&m, true),
            "is the input",
            fx.model.clone(),
        ),
        (
            "merge onto its adapter",
            merge(&adapter, true),
            "is the input",
            fx.adapter.clone(),
        ),
        (
            "merge inside its adapter",
            merge(&s(&fx.adapter.join("m")), true),
            "inside the input",
            fx.adapter.clone(),
        ),
        (
            "merge onto a file",
            merge(&ef, true),
            "is a file",
            existing_file.clone(),
        ),
        (
            "merge onto an existing dir",
            merge(&ed, false),
            "already exists",
            existing_dir.clone(),
        ),
        (
            "train into the model dir",
            {
                let mut v = tr(&[]);
                let i = v.iter().position(|x| x == "--out").unwrap();
                v[i + 1] = m.clone();
                v
            },
            "is the input",
            fx.model.clone(),
        ),
        (
            "train into a non-empty dir",
            {
                let mut v = tr(&[]);
                let i = v.iter().position(|x| x == "--out").unwrap();
                v[i + 1] = ed.clone();
                v
            },
            "not empty",
            existing_dir.clone(),
        ),
        (
            "train into a file",
            {
                let mut v = tr(&[]);
                let i = v.iter().position(|x| x == "--out").unwrap();
                v[i + 1] = ef.clone();
                v
            },
            "is a file",
            existing_file.clone(),
        ),
        (
            "train again into a finished run",
            {
                let mut v = tr(&[]);
                let i = v.iter().position(|x| x == "--out").unwrap();
                v[i + 1] = adapter.clone();
                v
            },
            "--resume",
            fx.adapter.clone(),
        ),
        (
            "train --resume without a checkpoint",
            {
                let mut v = tr(&["--resume"]);
                let i = v.iter().position(|x| x == "--out").unwrap();
                v[i + 1] = s(&fx.p("fresh"));
                v
            },
            "no checkpoint",
            fx.p("fresh"),
        ),
    ];
    for (label, out, force, expect, watched) in [
        (
            "tasks onto an existing file",
            ef.clone(),
            false,
            "already exists",
            existing_file.clone(),
        ),
        (
            "tasks onto a directory",
            ed.clone(),
            true,
            "is a directory",
            existing_dir.clone(),
        ),
        (
            "tasks onto the model's weights",
            s(&fx.model.join("model.safetensors")),
            true,
            "inside the input",
            fx.model.clone(),
        ),
        (
            "tasks into the model dir",
            s(&fx.model.join("tasks.json")),
            false,
            "inside the input",
            fx.model.clone(),
        ),
    ] {
        let mut v: Vec<String> = [
            "eval",
            "tasks",
            "--model",
            &m,
            "--tasks",
            "rte",
            "--limit",
            "1",
            "--data-dir",
            &shared("eval"),
            "--out",
            &out,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if force {
            v.push("--force".into());
        }
        paths.push((label, v, expect, watched));
    }
    for (label, args, expect, watched) in &paths {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        add(label, &args, &[*expect], Some(watched));
    }

    // ---- Recipes: every problem at once, before anything runs. ----
    let good = format!(
        "name = \"r\"\nmodel = {m:?}\n[train]\ndata = {data:?}\nmax_steps = 1\nbatch_size = 4\nval_size = 2\n"
    );
    let recipes: Vec<(&str, String, Vec<&str>)> = vec![
        ("invalid TOML", "name = ".into(), vec!["invalid TOML"]),
        ("no model", "name = \"x\"\n".into(), vec!["needs model"]),
        (
            "model missing",
            "model = \"/nonexistent/model\"\n".into(),
            vec!["no config.json"],
        ),
        (
            "model not a string",
            "model = 3\n".into(),
            vec!["needs model"],
        ),
        ("unknown top key", good.clone(), vec![]),
        (
            "max_steps a word",
            good.replace("max_steps = 1", "max_steps = \"two\""),
            vec!["train.max_steps = \"two\"", "whole number"],
        ),
        (
            "r negative",
            format!("{good}r = -4\n"),
            vec!["train.r = -4"],
        ),
        (
            "r does not divide",
            format!("{good}r = 3\n"),
            vec!["train.r = 3", "does not divide"],
        ),
        (
            "lr negative",
            format!("{good}lr = -1.0\n"),
            vec!["train.lr = -1.0", "learning rate"],
        ),
        (
            "dropout 2",
            format!("{good}dropout = 2\n"),
            vec!["train.dropout = 2", "[0, 1)"],
        ),
        (
            "epochs 0",
            format!("{good}epochs = 0\n"),
            vec!["train.epochs = 0"],
        ),
        (
            "schedule unknown",
            format!("{good}schedule = \"step\"\n"),
            vec!["linear or cosine"],
        ),
        (
            "switch not a bool",
            format!("{good}grad_checkpoint = \"yes\"\n"),
            vec!["train.grad_checkpoint", "true or false"],
        ),
        (
            "data missing",
            good.replace(&format!("data = {data:?}"), "data = \"/nonexistent.json\""),
            vec!["train.data", "does not exist"],
        ),
        (
            "train method unknown",
            format!("{good}method = \"qlora\"\n"),
            vec!["train.method", "qlora"],
        ),
        (
            "name escapes",
            good.replace("name = \"r\"", "name = \"../escape\""),
            vec!["name = \"../escape\"", "one plain name"],
        ),
        (
            "name with a slash",
            good.replace("name = \"r\"", "name = \"a/b\""),
            vec!["one plain name"],
        ),
        (
            "name hidden",
            good.replace("name = \"r\"", "name = \".hidden\""),
            vec!["one plain name"],
        ),
        (
            "prune not a table",
            format!("prune = 3\n{good}"),
            vec!["[prune] must be a table"],
        ),
        (
            "prune without sparsity",
            format!("{good}[prune]\nmethod = \"wanda\"\n"),
            vec!["needs method and sparsity"],
        ),
        (
            "prune sparsity unknown",
            format!("{good}[prune]\nmethod = \"wanda\"\nsparsity = \"lots\"\n"),
            vec!["prune.sparsity"],
        ),
        (
            "prune N:M against widths",
            format!("{good}[prune]\nmethod = \"wanda\"\nsparsity = \"3:16\"\n"),
            vec!["3:16"],
        ),
        (
            "prune nsamples 0",
            format!("{good}[prune]\nmethod = \"wanda\"\nsparsity = 0.5\nnsamples = 0\n"),
            vec!["prune.nsamples = 0"],
        ),
        (
            "prune percdamp negative",
            format!("{good}[prune]\nmethod = \"wanda\"\nsparsity = 0.5\npercdamp = -0.5\n"),
            vec!["prune.percdamp"],
        ),
        (
            "eval tasks unknown",
            format!("{good}[eval]\ntasks = \"mmlu\"\n"),
            vec!["eval.tasks", "mmlu"],
        ),
        (
            "eval limit without tasks",
            format!("{good}[eval]\nlimit = 3\n"),
            vec!["without eval.tasks"],
        ),
        (
            "eval max_windows 0",
            format!("{good}[eval]\nppl_text = {text:?}\nmax_windows = 0\n"),
            vec!["eval.max_windows = 0"],
        ),
        (
            "eval seqlen a word",
            format!("{good}[eval]\nppl_text = {text:?}\nseqlen = \"long\"\n"),
            vec!["eval.seqlen"],
        ),
        (
            "dtype unknown",
            format!("dtype = \"f8\"\n{good}"),
            vec!["dtype", "f8"],
        ),
        (
            "sweep lists a value twice",
            format!("{good}lr = [1e-3, 1e-3]\n"),
            vec!["train.lr lists 0.001 twice"],
        ),
        (
            "sweep holds a bad value",
            format!("{good}r = [4, -4]\n"),
            vec!["train.r = -4"],
        ),
        (
            "range test lr_min above lr_max",
            format!("{good}lr = \"find\"\nlr_min = 0.5\nlr_max = 0.1\n"),
            vec!["train.lr = \"find\"", "0 < --lr-min < --lr-max"],
        ),
        (
            "range test settings without lr find",
            format!("{good}lr_max = 0.1\n"),
            vec!["train.lr_max", "lr = \"find\""],
        ),
        (
            "many problems at once",
            format!("bogus = 1\n{good}max_step = 2\nlr = 0\n")
                .replace("max_steps = 1", "max_steps = \"two\""),
            vec![
                "bogus",
                "train.max_step (did you mean train.max_steps?)",
                "train.lr = 0",
                "train.max_steps = \"two\"",
            ],
        ),
    ];
    for (i, (label, body, expect)) in recipes.into_iter().enumerate() {
        let body = if label == "unknown top key" {
            format!("colour = \"red\"\n{body}")
        } else {
            body
        };
        let expect = if label == "unknown top key" {
            vec!["unknown recipe keys: colour"]
        } else {
            expect
        };
        let f = fx.write(&format!("recipe-{i}.toml"), body);
        let out = fx.p(&format!("run-{i}"));
        add(
            &format!("recipe: {label}"),
            &["run", &f, "--out", &s(&out)],
            &expect,
            Some(&out),
        );
    }
    let good_recipe = fx.write("good.toml", &good);
    add(
        "recipe: missing file",
        &[
            "run",
            &s(&fx.p("none.toml")),
            "--out",
            &s(&fx.p("run-none")),
        ],
        &["none.toml"],
        Some(&fx.p("run-none")),
    );
    add(
        "run: --out is a file",
        &["run", &good_recipe, "--out", &ef],
        &["is a file"],
        Some(&existing_file),
    );
    add(
        "run: --out holds something else",
        &["run", &good_recipe, "--out", &ed],
        &["already holds a run", "--resume"],
        Some(&existing_dir),
    );
    add(
        "run: --resume on a directory that is no run",
        &["run", &good_recipe, "--out", &ed, "--resume"],
        &["not a run directory"],
        Some(&existing_dir),
    );
    let locked = fx.p("locked-run");
    std::fs::create_dir(&locked).unwrap();
    std::fs::write(locked.join("run.json"), "{}").unwrap();
    std::fs::write(locked.join(".spp-run.lock"), std::process::id().to_string()).unwrap();
    add(
        "run: directory in use by a live run",
        &["run", &good_recipe, "--out", &s(&locked), "--resume"],
        &[
            "in use by another spp run",
            &format!("pid {}", std::process::id()),
        ],
        Some(&locked),
    );
    gguf_copy
}
