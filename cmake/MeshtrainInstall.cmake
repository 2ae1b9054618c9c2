include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# meshtrain_warnings (compile options of this project's own targets) stays out of the export:
# meshtrain links it as $<BUILD_INTERFACE:...>.
install(TARGETS meshtrain meshtrain_kokkos EXPORT meshtrainTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# The public headers only: internal ones (the NCCL error checks, which include CUDA's and
# NCCL's headers) live beside the sources in src/.
install(DIRECTORY include/meshtrain DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${CMAKE_BINARY_DIR}/include/meshtrain DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT meshtrainTargets NAMESPACE meshtrain:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/meshtrain)
configure_package_config_file(cmake/meshtrainConfig.cmake.in
  ${CMAKE_BINARY_DIR}/meshtrainConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/meshtrain)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/meshtrainConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/meshtrainConfig.cmake ${CMAKE_BINARY_DIR}/meshtrainConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/meshtrain)
