//! `postbox passwd`: rewriting the file and the batch-mode commands.

use std::path::Path;

use super::temp_dir;
use crate::auth::passwd_cli::{
    check_username, rewrite, run, write_atomically, Change, HashKind, PasswdArgs, PasswdError,
};
use crate::auth::password_file::{PasswordFile, PasswordHash};

fn set(pw: &str) -> (Change, String) {
    let h = PasswordHash::new_pbkdf2(pw.as_bytes(), 1).unwrap();
    let shown = h.to_string();
    (Change::Set(h), shown)
}

#[test]
fn rewrite_adds_replaces_and_deletes_keeping_other_lines() {
    let (change, h) = set("pw");
    assert_eq!(rewrite(None, "alice", &change).unwrap(), format!("alice:{h}\n"));

    let existing = "# users\nbob:$6$x$y\r\nalice:old\n\ncarol:$7$1$a$b";
    assert_eq!(
        rewrite(Some(existing), "alice", &change).unwrap(),
        format!("# users\nbob:$6$x$y\r\nalice:{h}\n\ncarol:$7$1$a$b")
    );
    assert_eq!(
        rewrite(Some(existing), "dave", &change).unwrap(),
        format!("{existing}\ndave:{h}\n"),
        "appended on a line of its own"
    );
    assert_eq!(
        rewrite(Some(existing), "bob", &Change::Delete).unwrap(),
        "# users\nalice:old\n\ncarol:$7$1$a$b"
    );
    assert_eq!(rewrite(Some(existing), "dave", &Change::Delete), None);
    // A user whose name prefixes another's is not confused with it.
    assert_eq!(rewrite(Some("al:x\n"), "alice", &Change::Delete), None);
    // Repeated lines of the user collapse into one.
    assert_eq!(
        rewrite(Some("a:1\nb:2\na:3\n"), "a", &change).unwrap(),
        format!("a:{h}\nb:2\n")
    );
    // A comment that looks like the user is left alone.
    assert_eq!(
        rewrite(Some("#a:1\n"), "#a", &Change::Delete),
        None,
        "comments are not users"
    );
}

#[test]
fn user_names_the_file_cannot_hold_are_refused() {
    // ` #x` would be written as a comment line: the user could never log in.
    for bad in ["", "a:b", "new\nline", "#hash", " #hash", "\t#hash"] {
        assert!(
            matches!(check_username(bad), Err(PasswdError::Usage(_))),
            "{bad:?}"
        );
    }
    check_username("alice smith").unwrap();
    check_username("ünï").unwrap();
}

fn args(file: &Path, user: &str, password: Option<&str>) -> PasswdArgs {
    PasswdArgs {
        create: false,
        batch: password.is_some(),
        delete: false,
        hash: HashKind::Sha512Pbkdf2,
        iterations: 5,
        file: file.to_path_buf(),
        username: user.to_string(),
        password: password.map(str::to_string),
    }
}

#[test]
fn batch_mode_creates_updates_and_deletes() {
    let dir = temp_dir("passwd");
    let file = dir.join("passwd");

    // Without -c the file must exist.
    let e = run(&args(&file, "alice", Some("a1"))).unwrap_err();
    assert!(e.to_string().contains("-c creates it"), "{e}");

    run(&PasswdArgs {
        create: true,
        ..args(&file, "alice", Some("a1"))
    })
    .unwrap();
    run(&PasswdArgs {
        hash: HashKind::Sha512,
        ..args(&file, "bob", Some("b1"))
    })
    .unwrap();
    run(&args(&file, "alice", Some("a2"))).unwrap();
    let pw = PasswordFile::load(&file).unwrap();
    assert_eq!(pw.len(), 2);
    assert!(pw.get("alice").unwrap().verify(b"a2"));
    assert!(!pw.get("alice").unwrap().verify(b"a1"));
    assert!(matches!(pw.get("bob").unwrap(), PasswordHash::Sha512 { .. }));
    assert!(pw.get("bob").unwrap().verify(b"b1"));

    run(&PasswdArgs {
        delete: true,
        ..args(&file, "alice", None)
    })
    .unwrap();
    let e = run(&PasswdArgs {
        delete: true,
        ..args(&file, "alice", None)
    })
    .unwrap_err();
    assert!(matches!(e, PasswdError::UnknownUser { .. }), "{e}");
    let pw = PasswordFile::load(&file).unwrap();
    assert!(pw.get("alice").is_none() && pw.get("bob").is_some());

    // -c starts over.
    run(&PasswdArgs {
        create: true,
        ..args(&file, "carol", Some("c1"))
    })
    .unwrap();
    let pw = PasswordFile::load(&file).unwrap();
    assert_eq!(pw.len(), 1);

    // Nothing but the file is left in the directory.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("passwd")]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn argument_combinations_are_checked() {
    let file = Path::new("/nonexistent/passwd");
    let e = run(&PasswdArgs {
        batch: true,
        ..args(file, "a", None)
    })
    .unwrap_err();
    assert!(e.to_string().contains("-b needs a password"), "{e}");
    let e = run(&PasswdArgs {
        batch: false,
        ..args(file, "a", Some("p"))
    })
    .unwrap_err();
    assert!(e.to_string().contains("needs -b"), "{e}");
    let e = run(&args(file, "a:b", Some("p"))).unwrap_err();
    assert!(e.to_string().contains("contains `:`"), "{e}");
    let e = run(&PasswdArgs {
        create: true,
        ..args(&temp_dir("empty").join("p"), "a", Some(""))
    })
    .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}

#[cfg(unix)]
#[test]
fn new_files_are_private_and_rewrites_keep_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("perm");
    let file = dir.join("p");
    write_atomically(&file, b"a\n").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    write_atomically(&file, b"b\n").unwrap();
    assert_eq!(mode(&file), 0o640);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "b\n");

    // Through a symbolic link: the target changes, the link stays.
    let link = dir.join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    write_atomically(&link, b"c\n").unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "c\n");
    let _ = std::fs::remove_dir_all(&dir);
}
