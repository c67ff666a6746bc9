// Command pulumi-language-python is a small stand-in for Pulumi's Python
// language host, built by scripts/pulumi-toolchain.sh.
//
// The upstream host lives in its own Go module, which the Go module proxy
// reachable here does not serve. This one implements only what `pulumi
// preview/up/refresh/destroy` needs for a directory program: it runs the
// program with the `pulumi-language-python-exec` script that sits next to this
// binary (copied from the sdk/v3 module), using the Python of the
// `virtualenv` option in Pulumi.yaml (or PULUMI_PYTHON_CMD / python3).
// It also runs source-based plugin packages (a PulumiPlugin.yaml with
// `runtime: python`, e.g. plugin/ in this repository): RunPlugin starts the
// plugin's __main__.py with the same interpreter resolution.
//
// InstallDependencies (`pulumi install`) does what upstream's host does for a pip
// program with a `virtualenv` option: it creates the virtualenv when it is
// missing (`python3 -m venv`) and runs `pip install -r requirements.txt` in the
// project's root directory, streaming both commands' output to the engine. It
// leaves pip, setuptools and wheel as the virtualenv has them (upstream upgrades
// them from the package index on every install). `pulumi preview/up` create and
// fill a missing or empty virtualenv the same way before running the program.
// uv and poetry programs are handed to the sdk's toolchain as upstream does.
// Plugin requirements are not reported ahead of time: the engine loads each
// provider plugin when the program first uses it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/pulumi/pulumi/sdk/v3/go/common/apitype"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"github.com/pulumi/pulumi/sdk/v3/python/toolchain"
)

// The exec script exits with this code after it has already shown the user an error.
const exitShownToUser = 32

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	engine   string // engine gRPC address, passed on to the program
	executor string // path of pulumi-language-python-exec
}

func main() {
	self, err := os.Executable()
	if err != nil {
		fail(err)
	}
	h := &host{executor: filepath.Join(filepath.Dir(self), "pulumi-language-python-exec")}
	if _, err := os.Stat(h.executor); err != nil {
		fail(fmt.Errorf("missing executor: %w", err))
	}
	// The engine passes its own address as the last argument.
	if n := len(os.Args); n > 1 {
		h.engine = os.Args[n-1]
		exitWhenEngineGone(h.engine)
	}

	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, h)
			return nil
		},
	})
	if err != nil {
		fail(err)
	}
	fmt.Printf("%d\n", handle.Port) // tells the engine where to connect
	if err := <-handle.Done; err != nil {
		fail(err)
	}
}

// exitWhenEngineGone ends this host once its engine stops answering health checks, as upstream's
// hosts do: a CLI killed with SIGKILL cannot stop its plugins, so the host would otherwise live on
// as an orphan (ppid 1). The program it runs loses the engine too, and exits on its own.
func exitWhenEngineGone(engine string) {
	gone, cancel := context.WithCancel(context.Background())
	if err := rpcutil.Healthcheck(gone, engine, time.Second, cancel); err != nil {
		fail(err)
	}
	go func() {
		<-gone.Done()
		os.Exit(1)
	}()
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
	os.Exit(1)
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

func (h *host) GetRequiredPlugins(
	context.Context, *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

func (h *host) GetRequiredPackages(
	context.Context, *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

// python resolves the interpreter from the project's runtime options.
func python(info *pulumirpc.ProgramInfo) (toolchain.Toolchain, error) {
	opts, err := pythonOptions(info)
	if err != nil {
		return nil, err
	}
	return toolchain.ResolveToolchain(opts)
}

// pythonOptions reads the `virtualenv` and `toolchain` runtime options of Pulumi.yaml.
func pythonOptions(info *pulumirpc.ProgramInfo) (toolchain.PythonOptions, error) {
	opts := toolchain.PythonOptions{Root: info.GetRootDirectory(), ProgramDir: info.GetProgramDirectory()}
	options := info.GetOptions().AsMap()
	if v, ok := options["virtualenv"]; ok {
		s, ok := v.(string)
		if !ok {
			return opts, errors.New("virtualenv option must be a string")
		}
		opts.Virtualenv = s
	}
	if v, ok := options["toolchain"]; ok {
		switch v {
		case "pip":
			opts.Toolchain = toolchain.Pip
		case "uv":
			opts.Toolchain = toolchain.Uv
		case "poetry":
			opts.Toolchain = toolchain.Poetry
		default:
			return opts, fmt.Errorf("unsupported toolchain option: %v", v)
		}
	}
	return opts, nil
}

// usesPip: the program's dependencies are pip's (the `toolchain: pip` option, or no option and no
// uv.lock or poetry.lock, which is how ResolveToolchain decides).
func usesPip(opts toolchain.PythonOptions) bool {
	if opts.Toolchain == toolchain.Pip {
		return true
	}
	if opts.Toolchain != toolchain.Auto {
		return false
	}
	for dir := opts.ProgramDir; ; dir = filepath.Dir(dir) {
		for _, lock := range []string{"uv.lock", "poetry.lock"} {
			if _, err := os.Stat(filepath.Join(dir, lock)); err == nil {
				return false
			}
		}
		if filepath.Dir(dir) == dir {
			return true
		}
	}
}

// projectRoot is where requirements.txt and the virtualenv option are resolved from.
func projectRoot(info *pulumirpc.ProgramInfo) string {
	if root := info.GetRootDirectory(); root != "" {
		return root
	}
	return info.GetProgramDirectory()
}

// installWithPip is `pulumi install` for a pip program: create the virtualenv if it is missing or
// empty, then `python -m pip install -r requirements.txt` (when the file exists) in the root directory,
// both commands' output on stdout and stderr as they print it.
func installWithPip(ctx context.Context, info *pulumirpc.ProgramInfo, tc toolchain.Toolchain, stdout, stderr io.Writer) error {
	root := projectRoot(info)
	venv, err := tc.VirtualEnvPath(ctx)
	if err != nil {
		return err
	}
	if venv != "" && !toolchain.IsVirtualEnv(venv) {
		if stat, err := os.Stat(venv); err == nil && !stat.IsDir() {
			return fmt.Errorf("the 'virtualenv' option in Pulumi.yaml is set to %q, which is not a directory", venv)
		}
		fmt.Fprintf(stdout, "Creating virtual environment %s...\n", venv)
		create, err := toolchain.Command(ctx, "-m", "venv", venv) // python3, or PULUMI_PYTHON_CMD
		if err != nil {
			return err
		}
		create.Dir, create.Stdout, create.Stderr = root, stdout, stderr
		if err := create.Run(); err != nil {
			return fmt.Errorf("creating the virtual environment via '%s': %w", strings.Join(create.Args, " "), err)
		}
		fmt.Fprintln(stdout, "Finished creating virtual environment")
	}
	if _, err := os.Stat(filepath.Join(root, "requirements.txt")); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	fmt.Fprintln(stdout, "Installing dependencies in virtual environment...")
	// pip resolves the relative paths in requirements.txt (such as `-e .`) from its working directory.
	pip, err := tc.ModuleCommand(ctx, "pip", "install", "-r", "requirements.txt")
	if err != nil {
		return err
	}
	pip.Dir, pip.Stdout, pip.Stderr = root, stdout, stderr
	if err := pip.Run(); err != nil {
		return fmt.Errorf("installing dependencies via '%s': %w", strings.Join(pip.Args, " "), err)
	}
	fmt.Fprintln(stdout, "Finished installing dependencies")
	return nil
}

// ensureVenv fills a pip program's missing or empty virtualenv before the program runs, as upstream's
// host does on a first `pulumi preview` or `up`; any other virtualenv is left as it is.
func ensureVenv(ctx context.Context, info *pulumirpc.ProgramInfo, tc toolchain.Toolchain) error {
	opts, err := pythonOptions(info)
	if err != nil || opts.Virtualenv == "" || !usesPip(opts) {
		return err
	}
	venv, err := tc.VirtualEnvPath(ctx)
	if err != nil || toolchain.IsVirtualEnv(venv) {
		return err
	}
	if entries, err := os.ReadDir(venv); err == nil && len(entries) > 0 {
		return nil // not a virtualenv, but not ours to fill: ValidateVenv says so
	}
	return installWithPip(ctx, info, tc, os.Stdout, os.Stderr)
}

func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	tc, err := python(req.GetInfo())
	if err != nil {
		return nil, err
	}
	if err := ensureVenv(ctx, req.GetInfo(), tc); err != nil {
		return nil, err
	}
	if err := tc.ValidateVenv(ctx); err != nil {
		return nil, err
	}

	args := []string{"-u", h.executor}
	flag := func(name, value string) {
		if value != "" {
			args = append(args, "--"+name, value)
		}
	}
	flag("monitor", req.GetMonitorAddress())
	flag("engine", h.engine)
	flag("project", req.GetProject())
	flag("root_directory", req.GetInfo().GetRootDirectory())
	flag("stack", req.GetStack())
	flag("pwd", req.GetPwd())
	flag("dry_run", strconv.FormatBool(req.GetDryRun()))
	flag("parallel", strconv.Itoa(int(req.GetParallel())))
	flag("organization", req.GetOrganization())
	entry := req.GetInfo().GetEntryPoint()
	if entry == "" {
		entry = "."
	}
	args = append(append(args, entry), req.GetArgs()...)

	cmd, err := tc.Command(ctx, args...)
	if err != nil {
		return nil, err
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	// The exec script expects JSON objects/arrays here, never null.
	config := map[string]string{}
	for k, v := range req.GetConfig() {
		config[k] = v
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return nil, err
	}
	secretKeysJSON, err := json.Marshal(append([]string{}, req.GetConfigSecretKeys()...))
	if err != nil {
		return nil, err
	}
	cmd.Env = append(cmd.Env, "PULUMI_CONFIG="+string(configJSON), "PULUMI_CONFIG_SECRET_KEYS="+string(secretKeysJSON))
	// Copy the program's output through pipes of our own instead of handing it our stdout and
	// stderr: when the engine stops this host after a failed update, the program must not keep
	// the engine's pipes open (the engine would wait for them to close).
	cmd.Stdout, cmd.Stderr = struct{ io.Writer }{os.Stdout}, struct{ io.Writer }{os.Stderr}

	err = cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return &pulumirpc.RunResponse{}, nil
	case errors.As(err, &exitErr) && exitErr.ExitCode() == exitShownToUser:
		return &pulumirpc.RunResponse{Bail: true}, nil
	case errors.As(err, &exitErr):
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("program exited with non-zero exit code: %d", exitErr.ExitCode())}, nil
	default:
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("could not run the language executor: %v", err)}, nil
	}
}

// InstallDependencies is `pulumi install`: for a pip program, the virtualenv (created if missing)
// and requirements.txt (installWithPip); uv and poetry programs through the sdk's toolchain, as upstream.
// The output streams to the engine, which shows it.
func (h *host) InstallDependencies(
	req *pulumirpc.InstallDependenciesRequest, server pulumirpc.LanguageRuntime_InstallDependenciesServer,
) error {
	ctx := server.Context()
	opts, err := pythonOptions(req.GetInfo())
	if err != nil {
		return err
	}
	tc, err := toolchain.ResolveToolchain(opts)
	if err != nil {
		return err
	}
	closer, stdout, stderr, err := rpcutil.MakeInstallDependenciesStreams(server, req.GetIsTerminal())
	if err != nil {
		return err
	}
	defer closer.Close()
	if usesPip(opts) {
		err = installWithPip(ctx, req.GetInfo(), tc, stdout, stderr)
	} else {
		err = tc.InstallDependencies(ctx, projectRoot(req.GetInfo()), req.GetUseLanguageVersionTools(), true, stdout, stderr)
	}
	if err != nil {
		return err
	}
	return closer.Close()
}

// RunPlugin runs a source-based plugin: `python <plugin directory> <engine args>`, which executes
// its __main__.py in the working directory the engine asks for. Its output is streamed back, and
// the engine reads the provider's port from the first line of stdout.
func (h *host) RunPlugin(req *pulumirpc.RunPluginRequest, server pulumirpc.LanguageRuntime_RunPluginServer) error {
	if req.GetKind() != string(apitype.ResourcePlugin) {
		return fmt.Errorf("plugins of kind %q are not supported by this host", req.GetKind())
	}
	ctx := server.Context()
	tc, err := python(req.GetInfo())
	if err != nil {
		return err
	}
	if err := tc.ValidateVenv(ctx); err != nil {
		return err
	}
	args := append([]string{"-u", req.GetInfo().GetProgramDirectory()}, req.GetArgs()...)
	cmd, err := tc.Command(ctx, args...) // killed when the engine cancels the call
	if err != nil {
		return err
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	// The engine's environment for the plugin comes last, so it wins (as in upstream's host).
	cmd.Env = append(cmd.Env, req.GetEnv()...)
	cmd.Dir = req.GetPwd()
	closer, stdout, stderr, err := rpcutil.MakeRunPluginStreams(server, false)
	if err != nil {
		return err
	}
	defer closer.Close()
	cmd.Stdout, cmd.Stderr = stdout, stderr

	var exitErr *exec.ExitError
	if err := cmd.Run(); errors.As(err, &exitErr) {
		return server.Send(&pulumirpc.RunPluginResponse{
			Output: &pulumirpc.RunPluginResponse_Exitcode{Exitcode: int32(exitErr.ExitCode())},
		})
	} else if err != nil {
		return fmt.Errorf("could not run the plugin: %w", err)
	}
	return closer.Close()
}
