"""A corpus for the deterministic quality gates, written for the tests.

``GOOD``: source chunks (English, German, French, Spanish, Chinese, Japanese) with question-answer
pairs a careful model would write about them: standalone questions, answers that add facts from
the chunk, paraphrased the way instruct models do. The deterministic gates may drop at most 2 %
of them.

``BAD``: planted pairs of each kind the gates must catch, with the reason expected.
"""

EN_INSTALL = """## Installation

Tallyho needs Python 3.10 or newer. Install it from PyPI with `pip install tallyho`, or with
`pipx install tallyho` to keep it in its own environment. After installing, run `tallyho version`:
it prints the Tallyho version and the Python version on one line. On Windows the command is
`tallyho.exe`; make sure the Scripts folder of your Python installation is on PATH.

To upgrade, run `pip install --upgrade tallyho`. Tallyho never modifies your documents: it only
reads them. Configuration lives in `tallyho.toml` in the project root; if the file is missing,
the built-in defaults apply."""

EN_COUNT = """## Counting

`tallyho count PATH` counts words, lines and headings in every Markdown file under PATH and prints
a table with one row per file and a total row. Hidden folders such as `.git` are skipped. Code
blocks are not counted as words unless you pass `--include-code`. Use `--json` to print the result
as a JSON object instead of a table, which is handy in CI scripts. `--min-words 300` makes the
command exit with status 2 when any file has fewer than 300 words; the default threshold is 0,
which disables the check. Files larger than 5 MB are skipped with a warning. The `--exclude GLOB`
option, which may be given several times, leaves out matching files."""

EN_SERVER = """## Server mode

`tallyho serve` starts a small HTTP server that answers count requests. It listens on port 8731 on
localhost by default; change the port with `--port` and the address with `--host`. Every request
is a POST to `/count` with the Markdown text as the body, and the reply is the same JSON object
that `--json` prints. The server keeps no state between requests. It handles at most 64 requests
at once; further requests wait in a queue of 256. Requests bigger than 2 MB are refused with HTTP
413. Stop the server with Ctrl+C; it finishes the requests in flight before exiting. Logs go to
standard error in the common log format, and `--quiet` silences them."""

DE_CHUNK = """## Konfiguration

Tallyho liest seine Einstellungen aus der Datei `tallyho.toml` im Wurzelverzeichnis des Projekts.
Fehlt die Datei, gelten die eingebauten Standardwerte. Der Schlüssel `exclude` nimmt eine Liste
von Glob-Mustern auf; passende Dateien werden beim Zählen übersprungen. Mit `min_words` legt man
eine Mindestzahl an Wörtern pro Datei fest; der Standardwert 0 schaltet die Prüfung ab. Die Option
`--config` auf der Kommandozeile verweist auf eine andere Datei. Umgebungsvariablen mit dem Präfix
`TALLYHO_` überschreiben die Werte aus der Datei, zum Beispiel `TALLYHO_MIN_WORDS=200`. Ungültige
Schlüssel führen zu einer Fehlermeldung und dem Exit-Code 2."""

FR_CHUNK = """## Sortie

Par défaut, Tallyho affiche un tableau avec une ligne par fichier et une ligne de total. L'option
`--json` produit un objet JSON à la place, pratique dans les scripts d'intégration continue.
L'option `--sort` trie les lignes par nombre de mots, de lignes ou de titres ; le tri est
décroissant, et `--reverse` l'inverse. Les couleurs sont désactivées automatiquement lorsque la
sortie n'est pas un terminal, ou lorsque la variable d'environnement `NO_COLOR` est définie. Les
messages d'erreur vont sur la sortie d'erreur standard, jamais dans le tableau."""

ES_CHUNK = """## Integración continua

Tallyho se puede ejecutar en GitHub Actions con el paso `pip install tallyho` seguido de
`tallyho count docs --min-words 300`. Si algún archivo tiene menos palabras, el comando termina con
el código de salida 2 y el trabajo falla. Para publicar el resultado como artefacto, use `--json`
y redirija la salida a un archivo. La caché de pip acelera las instalaciones repetidas. En GitLab
CI funciona igual: basta con una imagen de Python 3.10 o posterior. Tallyho no necesita acceso a
la red durante el conteo."""

ZH_CHUNK = """## 安装

Tallyho 需要 Python 3.10 或更高版本。用 pip 从 PyPI 安装：运行 `pip install tallyho`。也可以用
`pipx install tallyho` 把它安装在独立的环境里。安装完成后，运行 `tallyho version`，它会在一行里显示
Tallyho 和 Python 的版本。Tallyho 只读取文件，从不修改你的文档。配置文件是项目根目录下的
`tallyho.toml`；如果没有这个文件，就使用内置的默认值。统计时会跳过隐藏文件夹，例如 `.git`。
代码块默认不计入字数，加上 `--include-code` 才会计入。"""

JA_CHUNK = """## 使い方

`tallyho count PATH` を実行すると、PATH 以下のすべての Markdown ファイルの単語数・行数・見出しの数を
数え、ファイルごとに一行の表と合計行を表示します。`.git` のような隠しフォルダは読み飛ばされます。
`--json` を付けると、表の代わりに JSON オブジェクトを出力します。CI のスクリプトで便利です。
`--min-words 300` を指定すると、300 語未満のファイルがある場合に終了コード 2 で終了します。
5 MB を超えるファイルは警告を出して読み飛ばされます。設定ファイルは `tallyho.toml` です。"""

GOOD = [
    (EN_INSTALL, [
        ("Which Python version does Tallyho require?", "Tallyho needs Python 3.10 or newer."),
        ("How do you install Tallyho from PyPI?", "Run `pip install tallyho`."),
        ("How can Tallyho be installed into its own isolated environment?",
         "Use `pipx install tallyho`, which keeps it in its own environment."),
        ("What does `tallyho version` print?",
         "It prints the Tallyho version and the Python version on a single line."),
        ("What is the Tallyho command called on Windows?",
         "On Windows it is `tallyho.exe`; the Scripts folder of the Python installation must be on PATH."),
        ("How do I upgrade Tallyho to the latest release?", "Run `pip install --upgrade tallyho`."),
        ("Does Tallyho change the Markdown files it counts?", "No. Tallyho only reads documents and never modifies them."),
        ("Where does Tallyho look for its configuration?", "In `tallyho.toml` in the project root."),
        ("What happens when tallyho.toml is missing?", "Tallyho uses its built-in defaults."),
        ("Which command checks that Tallyho was installed correctly?",
         "`tallyho version`, which shows the installed Tallyho and Python versions."),
        ("Why might `tallyho` not be found on Windows after installing it?",
         "Because the Scripts folder of your Python installation is not on PATH."),
        ("Is pipx supported for installing Tallyho?", "Yes: `pipx install tallyho` installs it in its own environment."),
    ]),
    (EN_COUNT, [
        ("What does `tallyho count PATH` count?", "Words, lines and headings in every Markdown file under PATH."),
        ("What does the output of `tallyho count` look like by default?",
         "A table with one row per file plus a total row."),
        ("Are hidden folders like .git included when Tallyho counts files?", "No, hidden folders such as `.git` are skipped."),
        ("Are code blocks counted as words by tallyho count?",
         "Not by default; pass `--include-code` to count them."),
        ("How do you get JSON output from tallyho count?",
         "Add `--json`, which prints a JSON object instead of the table."),
        ("Why is the --json option useful?", "Its JSON object is handy in CI scripts."),
        ("What does `--min-words 300` do?",
         "The command exits with status 2 if any file has fewer than 300 words."),
        ("What is the default value of --min-words?", "0, which disables the check."),
        ("What exit status does tallyho count return when a file is below the --min-words threshold?", "Status 2."),
        ("What happens to files larger than 5 MB during counting?", "They are skipped with a warning."),
        ("How can some files be excluded from tallyho count?",
         "Use `--exclude GLOB`; it can be repeated and leaves out the matching files."),
        ("Can --exclude be given more than once?", "Yes, it may be given several times."),
        ("Which option makes tallyho count include code blocks in the word count?", "`--include-code`."),
        ("Which files does tallyho count read?", "Every Markdown file under the given PATH, except in hidden folders."),
    ]),
    (EN_SERVER, [
        ("How do you start Tallyho's HTTP server?", "Run `tallyho serve`."),
        ("Which port does `tallyho serve` listen on by default?", "Port 8731 on localhost."),
        ("How can the port of tallyho serve be changed?", "With the `--port` option."),
        ("How do you make tallyho serve listen on another address?", "Pass the address with `--host`."),
        ("How do you send a count request to the Tallyho server?",
         "POST the Markdown text as the body to `/count`."),
        ("What does the Tallyho server reply to a count request?", "The same JSON object that `--json` prints."),
        ("Does the Tallyho server keep state between requests?", "No, it keeps no state between requests."),
        ("How many requests does tallyho serve handle concurrently?",
         "At most 64 at once; further requests wait in a queue of 256."),
        ("What happens to a request larger than 2 MB sent to tallyho serve?", "It is refused with HTTP 413."),
        ("How do you stop the Tallyho server?",
         "Press Ctrl+C; it finishes the requests in flight before exiting."),
        ("Where does tallyho serve write its logs?", "To standard error, in the common log format."),
        ("How can the server's logs be silenced?", "Start it with `--quiet`."),
        ("How big can the queue of waiting requests in tallyho serve get?", "256 requests."),
    ]),
    (DE_CHUNK, [
        ("Aus welcher Datei liest Tallyho seine Einstellungen?",
         "Aus der Datei `tallyho.toml` im Wurzelverzeichnis des Projekts."),
        ("Was passiert, wenn die Datei tallyho.toml fehlt?", "Dann gelten die eingebauten Standardwerte."),
        ("Wozu dient der Schlüssel `exclude` in tallyho.toml?",
         "Er nimmt eine Liste von Glob-Mustern auf; passende Dateien werden beim Zählen übersprungen."),
        ("Was legt `min_words` in der Tallyho-Konfiguration fest?",
         "Eine Mindestzahl an Wörtern pro Datei."),
        ("Welcher Standardwert gilt für min_words?", "Der Standardwert ist 0; er schaltet die Prüfung ab."),
        ("Wie kann man Tallyho eine andere Konfigurationsdatei geben?",
         "Mit der Option `--config` auf der Kommandozeile."),
        ("Wie überschreibt man Werte aus tallyho.toml mit Umgebungsvariablen?",
         "Mit Variablen, die mit `TALLYHO_` beginnen, zum Beispiel `TALLYHO_MIN_WORDS=200`."),
        ("Was passiert bei ungültigen Schlüsseln in tallyho.toml?",
         "Tallyho meldet einen Fehler und endet mit dem Exit-Code 2."),
        ("Welches Präfix haben die Umgebungsvariablen von Tallyho?", "Das Präfix `TALLYHO_`."),
        ("Wo muss die Datei tallyho.toml liegen?", "Im Wurzelverzeichnis des Projekts."),
        ("Haben Umgebungsvariablen Vorrang vor tallyho.toml?", "Ja, sie überschreiben die Werte aus der Datei."),
        ("Welchen Exit-Code liefert Tallyho bei einem ungültigen Konfigurationsschlüssel?", "Den Exit-Code 2."),
    ]),
    (FR_CHUNK, [
        ("Qu'affiche Tallyho par défaut ?", "Un tableau avec une ligne par fichier et une ligne de total."),
        ("Comment obtenir une sortie JSON avec Tallyho ?",
         "Avec l'option `--json`, qui produit un objet JSON à la place du tableau."),
        ("À quoi sert l'option --json de Tallyho dans l'intégration continue ?",
         "Elle produit un objet JSON, pratique dans les scripts d'intégration continue."),
        ("Comment trier les lignes du tableau de Tallyho ?",
         "Avec `--sort`, par nombre de mots, de lignes ou de titres."),
        ("Dans quel ordre l'option --sort de Tallyho trie-t-elle les lignes ?",
         "Par ordre décroissant ; `--reverse` inverse le tri."),
        ("Comment inverser le tri de Tallyho ?", "Ajoutez l'option `--reverse`."),
        ("Quand Tallyho désactive-t-il les couleurs ?",
         "Automatiquement quand la sortie n'est pas un terminal ou quand `NO_COLOR` est définie."),
        ("Quelle variable d'environnement désactive les couleurs de Tallyho ?", "La variable `NO_COLOR`."),
        ("Où Tallyho écrit-il ses messages d'erreur ?",
         "Sur la sortie d'erreur standard, jamais dans le tableau."),
        ("Les messages d'erreur de Tallyho apparaissent-ils dans le tableau ?",
         "Non, ils vont sur la sortie d'erreur standard."),
        ("Par quels critères l'option --sort de Tallyho peut-elle trier ?",
         "Par nombre de mots, de lignes ou de titres."),
    ]),
    (ES_CHUNK, [
        ("¿Cómo se ejecuta Tallyho en GitHub Actions?",
         "Con el paso `pip install tallyho` seguido de `tallyho count docs --min-words 300`."),
        ("¿Qué ocurre si un archivo tiene menos palabras que el mínimo de --min-words?",
         "El comando termina con el código de salida 2 y el trabajo falla."),
        ("¿Con qué código de salida termina tallyho count cuando un archivo no llega al mínimo de palabras?",
         "Con el código de salida 2."),
        ("¿Cómo se publica el resultado de Tallyho como artefacto?",
         "Use `--json` y redirija la salida a un archivo."),
        ("¿Qué acelera las instalaciones repetidas de Tallyho en CI?", "La caché de pip."),
        ("¿Funciona Tallyho en GitLab CI?",
         "Sí, funciona igual; basta con una imagen de Python 3.10 o posterior."),
        ("¿Qué versión de Python necesita la imagen de GitLab CI para Tallyho?", "Python 3.10 o posterior."),
        ("¿Necesita Tallyho acceso a la red durante el conteo?", "No, no necesita acceso a la red."),
        ("¿Qué comando instala Tallyho en un paso de GitHub Actions?", "`pip install tallyho`."),
        ("¿Qué opción de Tallyho conviene para guardar el resultado en un archivo?",
         "`--json`, redirigiendo la salida a un archivo."),
        ("¿Por qué falla el trabajo de CI cuando se usa --min-words 300?",
         "Porque algún archivo tiene menos de 300 palabras y el comando termina con el código 2."),
    ]),
    (ZH_CHUNK, [
        ("Tallyho 需要哪个版本的 Python？", "需要 Python 3.10 或更高版本。"),
        ("如何从 PyPI 安装 Tallyho？", "运行 `pip install tallyho`。"),
        ("怎样把 Tallyho 安装在独立的环境里？", "使用 `pipx install tallyho`。"),
        ("`tallyho version` 会显示什么？", "它会在一行里显示 Tallyho 和 Python 的版本。"),
        ("Tallyho 会修改我的文档吗？", "不会，Tallyho 只读取文件，从不修改文档。"),
        ("Tallyho 的配置文件叫什么，放在哪里？", "配置文件是项目根目录下的 `tallyho.toml`。"),
        ("如果没有 tallyho.toml 文件会怎样？", "就使用内置的默认值。"),
        ("Tallyho 统计时会处理隐藏文件夹吗？", "不会，统计时会跳过隐藏文件夹，例如 `.git`。"),
        ("Tallyho 默认会把代码块计入字数吗？", "默认不计入，加上 `--include-code` 才会计入。"),
        ("哪个选项能让 Tallyho 把代码块计入字数？", "`--include-code` 选项。"),
        ("安装 Tallyho 之后应该运行什么命令来确认？", "运行 `tallyho version`，它会显示 Tallyho 和 Python 的版本。"),
        ("除了 pip，还可以用什么工具安装 Tallyho？", "还可以用 pipx，命令是 `pipx install tallyho`。"),
    ]),
    (JA_CHUNK, [
        ("`tallyho count PATH` は何を数えますか？", "PATH 以下のすべての Markdown ファイルの単語数・行数・見出しの数を数えます。"),
        ("tallyho count の出力はどのような形式ですか？", "ファイルごとに一行の表と合計行を表示します。"),
        ("Tallyho は .git のような隠しフォルダも数えますか？", "いいえ、隠しフォルダは読み飛ばされます。"),
        ("Tallyho で JSON を出力するにはどうしますか？", "`--json` を付けると、表の代わりに JSON オブジェクトを出力します。"),
        ("--json オプションはどんなときに便利ですか？", "CI のスクリプトで便利です。"),
        ("`--min-words 300` を指定するとどうなりますか？", "300 語未満のファイルがある場合に終了コード 2 で終了します。"),
        ("Tallyho は 5 MB を超えるファイルをどう扱いますか？", "警告を出して読み飛ばします。"),
        ("Tallyho の設定ファイルの名前は何ですか？", "`tallyho.toml` です。"),
        ("単語数が足りないファイルがあるとき、tallyho count の終了コードは何ですか？", "終了コード 2 です。"),
        ("tallyho count は合計も表示しますか？", "はい、ファイルごとの行に加えて合計行を表示します。"),
        ("tallyho count はどのフォルダを読み飛ばしますか？", "`.git` のような隠しフォルダを読み飛ばします。"),
        ("CI で Tallyho の結果を機械的に処理したいときはどのオプションを使いますか？",
         "`--json` を使います。表の代わりに JSON オブジェクトが出力されます。"),
    ]),
]

# (chunk, question, answer, reason the gates must give)
BAD = [
    # dangling: the question leans on context the reader will not have
    (EN_COUNT, "What does this section say about hidden folders?", "Hidden folders such as `.git` are skipped.", "dangling"),
    (EN_COUNT, "According to the document, what does --json do?", "It prints a JSON object instead of a table.", "dangling"),
    (EN_COUNT, "What does the excerpt describe?", "How tallyho count counts words, lines and headings.", "dangling"),
    (EN_COUNT, "What is the default threshold mentioned above?", "The default threshold is 0.", "dangling"),
    (EN_COUNT, "What does this option do?", "It prints the result as a JSON object instead of a table.", "dangling"),
    (EN_COUNT, "Which files does this command skip?", "Files larger than 5 MB and hidden folders.", "dangling"),
    (EN_SERVER, "What does the text say about the port?", "The server listens on port 8731 by default.", "dangling"),
    (EN_SERVER, "In the passage, how are logs written?", "To standard error in the common log format.", "dangling"),
    (DE_CHUNK, "Was beschreibt dieser Abschnitt?", "Die Konfiguration von Tallyho in `tallyho.toml`.", "dangling"),
    (DE_CHUNK, "Was ist laut dem Text der Standardwert von min_words?", "Der Standardwert ist 0.", "dangling"),
    (DE_CHUNK, "Was macht diese Option?", "Sie verweist auf eine andere Konfigurationsdatei.", "dangling"),
    (FR_CHUNK, "Que dit ce passage sur les couleurs ?", "Elles sont désactivées quand la sortie n'est pas un terminal.", "dangling"),
    (FR_CHUNK, "Selon le texte, où vont les messages d'erreur ?", "Sur la sortie d'erreur standard.", "dangling"),
    (FR_CHUNK, "Que fait cette option ?", "Elle trie les lignes par nombre de mots.", "dangling"),
    (ES_CHUNK, "¿Qué explica esta sección sobre GitLab CI?", "Que funciona igual con Python 3.10 o posterior.", "dangling"),
    (ES_CHUNK, "Según el texto, ¿qué acelera las instalaciones?", "La caché de pip.", "dangling"),
    (ZH_CHUNK, "本节介绍了什么内容？", "介绍了如何安装 Tallyho。", "dangling"),
    (ZH_CHUNK, "根据上文，Tallyho 需要什么版本的 Python？", "需要 Python 3.10 或更高版本。", "dangling"),
    (ZH_CHUNK, "这个命令会显示什么？", "它会在一行里显示 Tallyho 和 Python 的版本。", "dangling"),
    (JA_CHUNK, "この節では何を説明していますか？", "tallyho count の使い方を説明しています。", "dangling"),
    (JA_CHUNK, "上記のコマンドは何を表示しますか？", "ファイルごとに一行の表と合計行を表示します。", "dangling"),
    (JA_CHUNK, "このオプションを付けるとどうなりますか？", "表の代わりに JSON オブジェクトを出力します。", "dangling"),
    # echo: the answer adds nothing to the question
    (EN_COUNT, "What does the --json option of tallyho count do?", "The --json option of tallyho count.", "echo"),
    (EN_COUNT, "Are code blocks counted as words by tallyho count?", "Code blocks counted as words.", "echo"),
    (EN_SERVER, "Which port does tallyho serve listen on by default?", "Tallyho serve listens on a port by default.", "echo"),
    (EN_SERVER, "How do you stop the Tallyho server?", "You stop the Tallyho server.", "echo"),
    (EN_INSTALL, "What does `tallyho version` print?", "It.", "echo"),
    (DE_CHUNK, "Wozu dient der Schlüssel exclude in tallyho.toml?", "Der Schlüssel exclude in tallyho.toml.", "echo"),
    (FR_CHUNK, "Comment inverser le tri de Tallyho ?", "Inverser le tri de Tallyho.", "echo"),
    (ES_CHUNK, "¿Qué acelera las instalaciones repetidas de Tallyho?", "Las instalaciones repetidas de Tallyho.", "echo"),
    (ZH_CHUNK, "Tallyho 的配置文件叫什么？", "Tallyho 的配置文件。", "echo"),
    (JA_CHUNK, "Tallyho の設定ファイルの名前は何ですか？", "Tallyho の設定ファイルの名前です。", "echo"),
    # ungrounded: the answer's new words (or numbers) are not in the chunk
    (EN_SERVER, "Which port does tallyho serve listen on by default?", "It listens on port 8080.", "ungrounded"),
    (EN_SERVER, "How do you secure tallyho serve?",
     "Enable TLS certificates through the nginx reverse proxy and rotate credentials monthly.", "ungrounded"),
    (EN_COUNT, "How are the results of tallyho count sorted?",
     "Alphabetically by filename, descending, with symlinks resolved first.", "ungrounded"),
    (DE_CHUNK, "Wie kann man Tallyho mit Docker starten?",
     "Mit dem offiziellen Container-Image und einem gemounteten Volumen.", "ungrounded"),
    (FR_CHUNK, "Comment Tallyho gère-t-il les fichiers PDF ?",
     "Il convertit chaque PDF en HTML grâce à Poppler avant l'analyse.", "ungrounded"),
    (ES_CHUNK, "¿Cuánto tarda Tallyho en GitHub Actions?", "Unos 45 segundos en una máquina estándar.", "ungrounded"),
    (ZH_CHUNK, "Tallyho 支持哪些操作系统？", "支持苹果电脑、安卓手机和智能电视。", "ungrounded"),
    (ZH_CHUNK, "Tallyho 需要哪个版本的 Python？", "需要 Python 2.7。", "ungrounded"),
    (JA_CHUNK, "tallyho count は画像をどう扱いますか？", "画像は自動的に圧縮されてクラウドに保存されます。", "ungrounded"),
]
