use super::*;

fn parse(toml_text: &str) -> Result<SourceConfig, String> {
    toml::from_str(toml_text).map_err(|e| e.to_string())
}

fn ctx(dir: &Path) -> SourceContext {
    SourceContext { camera: "cam".into(), state_dir: dir.join("state") }
}

#[test]
fn dir_defaults() {
    let c = parse("kind = \"dir\"\npath = \"/srv/ftp\"").expect("parses");
    let SourceConfig::Dir(d) = c else { panic!("dir expected") };
    assert_eq!(d.extensions, ["jpg", "jpeg", "png"]);
    assert_eq!(d.after, After::Keep);
    assert_eq!((d.poll_interval_ms, d.settle_ms, d.move_to), (250, 1000, None));
}

#[test]
fn every_kind_parses_and_round_trips() {
    for text in [
        "kind = \"dir\"\npath = \"/in\"\nafter = \"move\"\nmove_to = \"/done\"\nsettle_ms = 0\nextensions = []",
        "kind = \"http\"\nurl = \"http://cam/snap.jpg\"\ninterval_ms = 500\nusername = \"u\"\npassword = \"p\"",
        "kind = \"http\"\nurl = \"http://cam/video\"\nmode = \"mjpeg\"\nmax_frame_bytes = 1000",
        "kind = \"v4l2\"\nwidth = 1280\nheight = 720",
        "kind = \"replay\"\npath = \"/frames\"\nfps = 12.5\nloop = false",
    ] {
        let c = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let again = toml::to_string(&c).expect("serialises");
        assert_eq!(parse(&again).expect("re-parses"), c, "{text}");
    }
}

#[test]
fn mistakes_are_refused_by_the_parser() {
    for (text, needle) in [
        ("kind = \"dir\"\npath = \"/in\"\nsettle = 5", "unknown field `settle`"),
        ("kind = \"ftp\"\npath = \"/in\"", "unknown variant `ftp`"),
        ("path = \"/in\"", "missing field `kind`"),
        ("kind = \"dir\"\npath = \"/in\"\nafter = \"archive\"", "unknown variant `archive`"),
        ("kind = \"http\"\nurl = \"http://x\"\nmode = \"rtsp\"", "unknown variant `rtsp`"),
        ("kind = \"replay\"\npath = \"/f\"\nlooping = true", "unknown field `looping`"),
    ] {
        let err = parse(text).expect_err(text);
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn build_validates_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let folder = tmp.path().to_str().expect("utf-8 temp path");
    let cases = [
        (format!("kind = \"dir\"\npath = \"{folder}/missing\""), "is not a folder"),
        (format!("kind = \"dir\"\npath = \"{folder}\"\nafter = \"move\""), "needs move_to"),
        (format!("kind = \"dir\"\npath = \"{folder}\"\nmove_to = \"{folder}/x\""), "only used with after"),
        (format!("kind = \"dir\"\npath = \"{folder}\"\nafter = \"move\"\nmove_to = \"{folder}\""), "another folder"),
        (format!("kind = \"dir\"\npath = \"{folder}\"\npoll_interval_ms = 0"), "poll_interval_ms"),
        ("kind = \"http\"\nurl = \"ftp://cam/x\"".to_owned(), "must be http or https"),
        ("kind = \"http\"\nurl = \"not a url\"".to_owned(), "url"),
        ("kind = \"http\"\nurl = \"http://cam/x\"\ninterval_ms = 0".to_owned(), "interval_ms"),
        ("kind = \"http\"\nurl = \"http://cam/x\"\npassword = \"p\"".to_owned(), "password needs username"),
        ("kind = \"v4l2\"\nwidth = 0\nheight = 480".to_owned(), "width and height"),
        ("kind = \"v4l2\"\nwidth = 640\nheight = 480\nfourcc = \"YUYV\"".to_owned(), "fourcc"),
        ("kind = \"v4l2\"\nwidth = 640\nheight = 480\nfps = 0".to_owned(), "fps"),
        (format!("kind = \"replay\"\npath = \"{folder}\""), "no files"),
        (format!("kind = \"replay\"\npath = \"{folder}\"\nfps = -1.0"), "fps"),
    ];
    for (text, needle) in cases {
        let config = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let err = config.build(&ctx(tmp.path())).expect_err(&text);
        assert_eq!(err.kind(), "config", "{text}: {err}");
        assert!(err.to_string().contains(needle), "{text}: {err}");
    }
}

#[cfg(not(feature = "v4l2"))]
#[test]
fn v4l2_without_the_feature_says_so() {
    let config = parse("kind = \"v4l2\"\nwidth = 640\nheight = 480").expect("parses");
    let err = config.build(&ctx(Path::new("/tmp"))).expect_err("no feature");
    assert!(err.to_string().contains("without the `v4l2` feature"), "{err}");
}

#[test]
fn credentials_never_reach_the_origin() {
    let config = parse("kind = \"http\"\nurl = \"http://admin:secret@127.0.0.1:9/snap.jpg\"").expect("parses");
    let source = config.build(&ctx(Path::new("/tmp"))).expect("builds");
    assert!(source.is_live());
    let described = source.describe();
    assert!(described.contains("127.0.0.1:9/snap.jpg") && !described.contains("secret"), "{described}");
}

#[test]
fn extensions() {
    let exts = ["jpg".to_owned(), ".PNG".to_owned()];
    for (name, ok) in [("a.jpg", true), ("a.JPG", true), ("b.png", true), ("c.jpeg", false), ("d", false)] {
        assert_eq!(extension_matches(&exts, name), ok, "{name}");
    }
    assert!(extension_matches(&[], "anything.txt"));
}
